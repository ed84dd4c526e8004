// The library's log events reach a JavaScript handler at the chosen level.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { tempDir, waitFor } from '../testlib/helpers.mjs'

const { App, setLogHandler } = createRequire(import.meta.url)('../index.js')

test('log events reach the handler; bad levels are refused', async () => {
  assert.throws(() => setLogHandler(() => {}, 'loud'), (err) => err.code === 'MC_INVALID_ARGUMENT' && /Invalid log level/.test(err.message))
  assert.throws(() => setLogHandler('not a function'), TypeError)
  const seen = []
  setLogHandler((level, target, message) => {
    seen.push({ level, target, message })
    throw new Error('ignored')
  }, 'info')
  const app = await App.open({ stateDir: await tempDir() })
  try {
    await app.start({ version: '1.0' })
    await app.ready({ timeoutMs: 60000 })
    await waitFor('the ready event', () => seen.some((e) => e.message === 'Daemon is ready'))
    const ready = seen.find((e) => e.message === 'Daemon is ready')
    assert.deepEqual([ready.level, ready.target], ['info', 'microcluster::daemon'])
    assert.ok(seen.every((e) => ['error', 'warn', 'info'].includes(e.level)))
  } finally {
    await app.stop()
    setLogHandler(null)
  }
})

// The local Raft view and quorum-loss recovery with the daemons stopped.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { freePort, tempDir } from '../testlib/helpers.mjs'

const { App } = createRequire(import.meta.url)('../index.js')

test('localMembers and recover with every member stopped', async () => {
  const apps = []
  for (const name of ['m1', 'm2']) {
    const app = await App.open({ stateDir: await tempDir() })
    await app.start({ version: '1.0', heartbeatMs: 500 })
    await app.ready({ timeoutMs: 60000 })
    apps.push({ name, app, address: `127.0.0.1:${await freePort()}` })
  }
  const [m1, m2] = apps
  try {
    await m1.app.newCluster('m1', m1.address)
    await m2.app.joinCluster('m2', m2.address, await m1.app.newJoinToken('m2'))
  } finally {
    await m2.app.stop()
    await m1.app.stop()
  }
  const view = await m1.app.localMembers()
  assert.deepEqual(view.map((m) => [m.name, m.role, m.address]), [['m1', 'voter', m1.address], ['m2', 'voter', m2.address]])
  // Raft ids are 64-bit: they travel as decimal strings, exactly.
  assert.ok(view.every((m) => typeof m.id === 'string' && /^\d+$/.test(m.id)))

  await assert.rejects(m1.app.recover(view.slice(0, 1)), { code: 'MC_INVALID_ARGUMENT', message: /members cannot be added or removed/ })
  await assert.rejects(m1.app.recover([{ id: 'x', name: 'm1', address: m1.address, role: 'voter' }]), { code: 'MC_INVALID_ARGUMENT', message: /Invalid members/ })
  await assert.rejects(m1.app.recover('nope'), TypeError)

  view[1].role = 'spare'
  const tarball = await m1.app.recover(view)
  assert.match(tarball, /recovery_db\.tar\.gz$/)
  assert.deepEqual((await m1.app.localMembers()).map((m) => m.role), ['voter', 'spare'])
})

// The process exits by itself once its app is stopped (hooks are weak ThreadsafeFunctions).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

test('a process exits cleanly after stop()', async () => {
  const script = fileURLToPath(new URL('../testlib/exit-child.mjs', import.meta.url))
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (chunk) => { out += chunk })
  const code = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`no exit; output: ${out}`)) }, 120000)
    child.on('exit', (status) => { clearTimeout(timer); resolve(status) })
  })
  assert.equal(code, 0)
  assert.match(out, /bootstrapped/)
  assert.match(out, /stopped/)
})

// A 3-member cluster across three Node processes (each a testlib/member-child.mjs): bootstrap,
// tokens, joins, transactions from two processes read on the third, serializable
// read-modify-write counters from two processes at once, the hooks each process saw in order
// (SPEC §10), an extension endpoint forwarded over mTLS, removal and reset, and a clean exit.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import { freePort, tempDir, waitFor } from '../testlib/helpers.mjs'

const CHILD = fileURLToPath(new URL('../testlib/member-child.mjs', import.meta.url))
const TIMEOUT_MS = 60000

/** A member-child.mjs process: commands go to its stdin, its JSON lines are collected. */
class Child {
  constructor (stateDir) {
    this.stateDir = stateDir
    this.proc = spawn(process.execPath, [CHILD, stateDir], { stdio: ['pipe', 'pipe', 'pipe'] })
    this.events = []
    this.stderr = ''
    this.answered = 0
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })))
    this.exitCode = undefined
    this.exited.then(({ code }) => { this.exitCode = code })
    readline.createInterface({ input: this.proc.stdout }).on('line', (line) => { this.events.push(JSON.parse(line)) })
    this.proc.stderr.on('data', (chunk) => { this.stderr += chunk })
  }

  describe () {
    return `events=${JSON.stringify(this.events)}\nstderr=${this.stderr.slice(-4000)}`
  }

  eventsOf (...kinds) {
    return this.events.filter((event) => kinds.includes(event.event))
  }

  waitEvent (what, check, timeoutMs = TIMEOUT_MS) {
    return waitFor(what, () => {
      if (this.exitCode !== undefined) throw new Error(`child exited (${this.exitCode}) waiting for ${what}: ${this.describe()}`)
      return check()
    }, timeoutMs)
  }

  send (command, ...args) {
    this.proc.stdin.write(JSON.stringify([command, ...args]) + '\n')
  }

  /** The answer to the oldest command not answered yet; rejects if it failed in the child. */
  async answer (timeoutMs = TIMEOUT_MS) {
    const index = this.answered++
    const event = await this.waitEvent('an answer', () => this.eventsOf('reply', 'error')[index], timeoutMs)
    if (event.event === 'error') throw Object.assign(new Error(event.message), { code: event.code })
    return event.result
  }

  call (command, ...args) {
    this.send(command, ...args)
    return this.answer()
  }

  hooks () {
    return this.eventsOf('hook').map((event) => event.hook)
  }

  hookCalls (name) {
    return this.eventsOf('hook').filter((event) => event.hook === name)
  }

  waitHook (name) {
    return this.waitEvent(`the ${name} hook`, () => this.hookCalls(name).length > 0)
  }

  /** Stops the member; resolves with the exit code, or rejects if the process does not exit in time. */
  async stop () {
    this.send('stop')
    this.proc.stdin.end()
    let timer
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no exit after stop: ${this.describe()}`)), TIMEOUT_MS)
    })
    try {
      return (await Promise.race([this.exited, timeout])).code
    } finally {
      clearTimeout(timer)
    }
  }
}

test('three member processes: bootstrap, joins, transactions, counters, hooks, endpoint, removal, exit', async (t) => {
  const began = Date.now()
  const root = await tempDir()
  const children = []
  t.after(async () => {
    for (const child of children) {
      if (child.exitCode === undefined) child.proc.kill('SIGKILL')
      await child.exited
    }
    await fs.rm(root, { recursive: true, force: true })
  })
  const start = async (name) => {
    const child = new Child(path.join(root, name))
    children.push(child)
    await child.waitEvent(`${name} to start`, () => child.eventsOf('started').length > 0)
    return child
  }
  const [c1, c2, c3] = [await start('c1'), await start('c2'), await start('c3')]
  assert.equal(new Set(children.map((child) => child.proc.pid)).size, 3)

  // Bootstrap in process 1, join tokens there, joins of processes 2 and 3.
  await c1.call('bootstrap', 'c1', `127.0.0.1:${await freePort()}`)
  const token2 = await c1.call('token', 'c2')
  const token3 = await c1.call('token', 'c3')
  await c2.call('join', 'c2', `127.0.0.1:${await freePort()}`, token2)
  await c3.call('join', 'c3', `127.0.0.1:${await freePort()}`, token3)
  for (const child of [c1, c2, c3]) assert.deepEqual(await child.call('members'), ['c1', 'c2', 'c3'])

  // Transactions written in processes 1 and 2, read back in process 3.
  assert.equal(await c1.call('execute', 'INSERT INTO kv VALUES (?, ?)', ['from', 'c1']), 1)
  assert.equal(await c2.call('execute', 'INSERT INTO kv VALUES (?, ?), (?, ?)', ['c2', 2, 'none', null]), 2)
  assert.deepEqual(await c3.call('query', 'SELECT key, value FROM kv ORDER BY key', []),
    [['c2', 2], ['from', 'c1'], ['none', null]])

  // Serializable read-modify-write increments from processes 1 and 2 at once: none is lost.
  const TIMES = 20
  await c1.call('execute', 'INSERT INTO counter VALUES (1, 0)', [])
  c1.send('increment', TIMES)
  c2.send('increment', TIMES)
  assert.deepEqual(await Promise.all([c1.answer(120000), c2.answer(120000)]), [TIMES, TIMES])
  assert.deepEqual(await c3.call('query', 'SELECT n FROM counter WHERE id = 1', []), [[2 * TIMES]])

  // The extension endpoint, called on one process and served by another over mTLS.
  let remote = await c1.call('request', 'GET', '/1.0/whoami?target=c2')
  assert.equal(remote.served_by, 'c2')
  assert.equal(remote.caller.kind, 'member')
  assert.equal(remote.caller.name, 'c1')
  remote = await c3.call('request', 'GET', '/1.0/whoami?target=c1')
  assert.equal(remote.served_by, 'c1')
  assert.equal(remote.caller.name, 'c3')
  assert.deepEqual(await c2.call('request', 'GET', '/1.0/whoami'), { served_by: 'c2', caller: { kind: 'control_socket' } })

  // Hooks so far, in order, each in its process (SPEC §10).
  assert.deepEqual(c1.hooks(), ['onStart', 'preInit', 'postBootstrap', 'onNewMember', 'onNewMember'])
  assert.deepEqual(c1.hookCalls('preInit')[0].args, { bootstrap: true, config: {} })
  assert.deepEqual(c1.hookCalls('onNewMember').map((call) => call.args.new_member.name), ['c2', 'c3'])
  assert.deepEqual(c2.hooks(), ['onStart', 'preInit', 'preJoin', 'postJoin', 'onNewMember'])
  assert.deepEqual(c2.hookCalls('preInit')[0].args, { bootstrap: false, config: {} })
  assert.equal(c2.hookCalls('onNewMember')[0].args.new_member.name, 'c3')
  assert.deepEqual(c3.hooks(), ['onStart', 'preInit', 'preJoin', 'postJoin'])
  for (const [child, name] of [[c1, 'c1'], [c2, 'c2'], [c3, 'c3']]) {
    for (const call of child.eventsOf('hook').filter((event) => event.hook !== 'onStart')) assert.equal(call.member, name)
  }

  // Removal of member 3, asked in process 1: preRemove on 3, postRemove on 1 and 2, and
  // process 3 is reset to an un-initialised member (still running).
  await c1.call('remove', 'c3')
  assert.deepEqual(await c1.call('members'), ['c1', 'c2'])
  assert.deepEqual(await c2.call('members'), ['c1', 'c2'])
  await c3.waitHook('onReset')
  assert.deepEqual(c3.hooks(), ['onStart', 'preInit', 'preJoin', 'postJoin', 'preRemove', 'onStart', 'onReset'])
  assert.deepEqual(c3.hookCalls('preRemove')[0].args, { force: false })
  assert.deepEqual(c3.hookCalls('onReset')[0].args, { reason: 'removed' })
  for (const child of [c1, c2]) {
    await child.waitHook('postRemove')
    assert.deepEqual(child.hookCalls('postRemove')[0].args, { force: false })
    assert.equal(child.hooks().at(-1), 'postRemove')
  }
  // Un-initialised (SPEC §2.3, §9.4): no member address, no daemon.yaml, no database.
  assert.equal((await c3.call('status')).address, '')
  await assert.rejects(fs.access(path.join(c3.stateDir, 'daemon.yaml')), { code: 'ENOENT' })
  await assert.rejects(c3.call('members'), (err) => {
    assert.equal(err.code, 'MC_UNAVAILABLE')
    assert.match(err.message, /Database is not yet initialized/)
    return true
  })
  // The cluster goes on without it.
  assert.equal(await c2.call('execute', "INSERT INTO kv VALUES ('after', 3)", []), 1)
  assert.deepEqual(await c1.call('query', "SELECT value FROM kv WHERE key = 'after'", []), [[3]])

  // Every process stops and exits 0, in time.
  for (const child of [c3, c2, c1]) {
    assert.equal(await child.stop(), 0, child.describe())
    assert.equal(child.eventsOf('stopped').length, 1, child.describe())
  }
  assert.ok(Date.now() - began < 120000)
})

// Extension endpoints answered by JavaScript handlers: called on one member's control socket
// and forwarded to another over mTLS (?target=), trust, async handlers, error statuses, and
// malformed descriptions.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import https from 'node:https'
import { createRequire } from 'node:module'
import { freePort, tempDir } from '../testlib/helpers.mjs'

const { App } = createRequire(import.meta.url)('../index.js')
const SCHEMA = ['CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value INTEGER)']

const SERVERS = [{
  name: 'greeter.example.com',
  serveUnix: true,
  endpoints: [
    {
      path: 'greet/{who}',
      proxyTarget: true,
      methods: {
        GET: (request) => {
          const who = request.vars.who
          if (who === 'nobody') throw Object.assign(new Error('nobody is not here'), { status: 404 })
          if (who === 'bad') throw Object.assign(new Error('bad is not a name'), { code: 'MC_INVALID_ARGUMENT' })
          if (who === 'oops') throw new Error('oops went wrong')
          return { hello: who, servedBy: request.state.name, caller: request.caller, trusted: request.trusted, query: request.query }
        },
      },
    },
    {
      path: 'kv',
      name: 'store',
      methods: {
        POST: {
          proxyTarget: true,
          handler: async ({ state, body }) => {
            await state.transaction((tx) => tx.execute('INSERT INTO kv VALUES (?, ?)', [body.key, body.value]))
            return state.transaction(async (tx) => (await tx.query('SELECT count(*) FROM kv'))[0][0])
          },
        },
      },
    },
    {
      path: 'public',
      methods: {
        GET: { allowUntrusted: true, handler: ({ caller, trusted }) => ({ caller: caller.kind, trusted }) },
        PUT: () => 'never for strangers',
      },
    },
  ],
}]

/** A request over TLS without a client certificate: an untrusted network caller. */
function untrusted (address, method, path) {
  const [host, port] = address.split(':')
  return new Promise((resolve, reject) => {
    const req = https.request({ host, port, method, path, rejectUnauthorized: false }, (res) => {
      let text = ''
      res.on('data', (chunk) => { text += chunk })
      res.on('end', () => resolve([res.statusCode, JSON.parse(text)]))
    })
    req.on('error', reject)
    req.end(method === 'GET' ? undefined : '{}')
  })
}

async function member (name, t) {
  const app = await App.open({ stateDir: await tempDir() })
  await app.start({ version: '1.0', schemaUpdates: SCHEMA, extensionServers: SERVERS })
  t.after(() => app.stop())
  await app.ready({ timeoutMs: 60000 })
  return { app, name, address: `127.0.0.1:${await freePort()}` }
}

test('endpoints across a two-member cluster', async (t) => {
  const m1 = await member('m1', t)
  const m2 = await member('m2', t)
  await m1.app.newCluster('m1', m1.address)
  await m2.app.joinCluster('m2', m2.address, await m1.app.newJoinToken('m2'))

  assert.deepEqual(await m1.app.query('GET', '/1.0/greet/ann?x=1'), {
    hello: 'ann', servedBy: 'm1', caller: { kind: 'control_socket' }, trusted: true, query: [['x', '1']],
  })
  // ?target=m2: m1 forwards the request to m2 over mTLS, where m1 is a trusted member.
  const remote = await m1.app.query('GET', '/1.0/greet/bob?target=m2')
  assert.equal(remote.servedBy, 'm2')
  assert.equal(remote.trusted, true)
  assert.equal(remote.caller.kind, 'member')
  assert.equal(remote.caller.name, 'm1')

  // An async handler with a body and transactions, on another member.
  assert.equal(await m1.app.query('POST', '/1.0/kv?target=m2', { key: 'a', value: 1 }), 1)
  assert.equal(await m2.app.query('post', '/1.0/kv', { key: 'b', value: 2 }), 2)
  const rows = await m1.app.transaction((tx) => tx.query('SELECT key FROM kv ORDER BY key'))
  assert.deepEqual(rows, [['a'], ['b']])

  // Handler errors keep their status and message, also when forwarded.
  await assert.rejects(m1.app.query('GET', '/1.0/greet/nobody?target=m2'), { code: 'MC_NOT_FOUND', message: /nobody is not here/ })
  await assert.rejects(m2.app.query('GET', '/1.0/greet/bad'), { code: 'MC_INVALID_ARGUMENT', message: /bad is not a name/ })
  await assert.rejects(m1.app.query('GET', '/1.0/greet/oops?target=m2'), { code: 'MC_INTERNAL', message: /oops went wrong/ })
  await assert.rejects(m1.app.query('GET', '/1.0/kv'), { code: 'MC_NOT_IMPLEMENTED' })
  await assert.rejects(m1.app.query('GET', '/1.0/nothing-here'), { code: 'MC_NOT_FOUND' })

  // Over the network without a client certificate: untrusted.
  const [status, answer] = await untrusted(m2.address, 'GET', '/1.0/public')
  assert.equal(status, 200)
  assert.deepEqual(answer.metadata, { caller: 'unknown', trusted: false })
  assert.equal((await untrusted(m2.address, 'PUT', '/1.0/public'))[0], 403)
  assert.equal((await untrusted(m2.address, 'GET', '/1.0/greet/eve'))[0], 403)
})

test('malformed extension servers are refused at start', async () => {
  const app = await App.open({ stateDir: await tempDir() })
  const servers = (methods, more = []) => [{ name: 'e.example.com', endpoints: [{ path: 'x', methods }, ...more] }]
  await assert.rejects(app.start({ version: '1.0', extensionServers: servers({ BREW: () => 1 }) }),
    { code: 'MC_INVALID_ARGUMENT', message: /unknown method "BREW"/ })
  await assert.rejects(app.start({ version: '1.0', extensionServers: servers({ GET: 42 }) }),
    { name: 'TypeError', message: /GET handler of endpoint x must be a function/ })
  await assert.rejects(app.start({ version: '1.0', extensionServers: servers({ GET: () => 1 }, [{ path: 'y', name: 'x', methods: { GET: () => 2 } }]) }),
    { code: 'MC_INVALID_ARGUMENT', message: /more than one endpoint named "x"/ })
  // Rules checked when the daemon starts (SPEC §13.2) fail the daemon.
  await app.start({ version: '1.0', extensionServers: [{ name: 'core', endpoints: [{ path: 'x', methods: { GET: () => 1 } }] }] })
  await assert.rejects(app.wait(), { code: 'MC_INVALID_ARGUMENT', message: /reserved server name "core"/ })
})

test('plain endpoints are served under /1.0/ next to extension servers', async () => {
  const app = await App.open({ stateDir: await tempDir() })
  try {
    await app.start({
      version: '1.0',
      endpoints: [{ path: 'hello/{who}', methods: { GET: (request) => `hi ${request.vars.who}` } }],
      extensionServers: [{ name: 'other.example.com', pathPrefix: '2.0', serveUnix: true, endpoints: [{ path: 'ping', methods: { GET: () => 'pong' } }] }],
    })
    await app.ready({ timeoutMs: 60000 })
    await app.newCluster('m1', `127.0.0.1:${await freePort()}`)
    assert.equal(await app.query('GET', '/1.0/hello/ann'), 'hi ann')
    assert.equal(await app.query('GET', '/2.0/ping'), 'pong')
    await assert.rejects(app.start({ version: '1.0', endpoints: 'nope' }), TypeError)
  } finally {
    await app.stop()
  }
})

test('access handlers decide whether a request reaches its handler', async () => {
  const ran = [] // the handlers that ran
  const checked = [] // what the access handlers of door/{who} saw
  const door = async ({ state, method, vars, trusted, caller }) => {
    checked.push({ member: state.name, method, who: vars.who, trusted, caller: caller.kind })
    if (vars.who === 'mallory') throw Object.assign(new Error('mallory is banned'), { code: 'MC_FORBIDDEN' })
    if (vars.who === 'oops') throw new Error('the guard fell asleep')
    if (vars.who === 'odd') return 'yes'
    return vars.who === 'ann'
  }
  const hasKey = ({ query }) => query.some(([key, value]) => key === 'key' && value === 's3cret')
  const app = await App.open({ stateDir: await tempDir() })
  try {
    await app.start({
      version: '1.0',
      endpoints: [
        { path: 'door/{who}', name: 'door', methods: { GET: { accessHandler: door, handler: ({ vars }) => { ran.push(vars.who); return `welcome ${vars.who}` } } } },
        {
          path: 'vault',
          allowUntrusted: true,
          accessHandler: hasKey,
          methods: {
            GET: () => { ran.push('vault GET'); return 'gold' },
            PUT: { accessHandler: () => true, handler: () => { ran.push('vault PUT'); return 'stored' } },
          },
        },
      ],
    })
    await app.ready({ timeoutMs: 60000 })
    const address = `127.0.0.1:${await freePort()}`
    await app.newCluster('m1', address)

    // true lets the request on; the access handler gets the handler's request, state included.
    assert.equal(await app.query('GET', '/1.0/door/ann'), 'welcome ann')
    assert.deepEqual(checked, [{ member: 'm1', method: 'GET', who: 'ann', trusted: true, caller: 'control_socket' }])
    // false answers 403 `not authorized`; an error answers as a handler's would. The handler never runs.
    await assert.rejects(app.query('GET', '/1.0/door/eve'), { code: 'MC_FORBIDDEN', message: /not authorized/ })
    await assert.rejects(app.query('GET', '/1.0/door/mallory'), { code: 'MC_FORBIDDEN', message: /mallory is banned/ })
    await assert.rejects(app.query('GET', '/1.0/door/oops'),
      { code: 'MC_INTERNAL', message: /access handler of the door endpoint failed: the guard fell asleep/ })
    await assert.rejects(app.query('GET', '/1.0/door/odd'),
      { code: 'MC_INTERNAL', message: /access handler of the door endpoint returned "yes", not a boolean/ })
    assert.deepEqual(ran, ['ann'])
    assert.equal(checked.length, 5)

    // The endpoint's accessHandler applies to its plain handlers; an action's own overrides it.
    await assert.rejects(app.query('GET', '/1.0/vault'), { code: 'MC_FORBIDDEN', message: /not authorized/ })
    assert.equal(await app.query('GET', '/1.0/vault?key=s3cret'), 'gold')
    assert.equal(await app.query('PUT', '/1.0/vault', {}), 'stored')
    assert.deepEqual(ran, ['ann', 'vault GET', 'vault PUT'])

    // Untrusted network callers: the access handler runs for them where allowUntrusted lets
    // them through, and not at all where the trust decision already refused them.
    const [refused, envelope] = await untrusted(address, 'GET', '/1.0/vault')
    assert.deepEqual([refused, envelope.error], [403, 'not authorized'])
    const [status, answer] = await untrusted(address, 'GET', '/1.0/vault?key=s3cret')
    assert.deepEqual([status, answer.metadata], [200, 'gold'])
    assert.equal((await untrusted(address, 'GET', '/1.0/door/ann'))[0], 403)
    assert.equal(checked.length, 5)
    assert.deepEqual(ran, ['ann', 'vault GET', 'vault PUT', 'vault GET'])
  } finally {
    await app.stop()
  }
})

test('a non-function accessHandler is refused at start', async () => {
  const app = await App.open({ stateDir: await tempDir() })
  const start = (endpoint) => app.start({ version: '1.0', extensionServers: [{ name: 'e.example.com', endpoints: [{ path: 'x', ...endpoint }] }] })
  await assert.rejects(start({ methods: { GET: { handler: () => 1, accessHandler: true } } }),
    { name: 'TypeError', message: /accessHandler of the GET handler of endpoint x must be a function/ })
  await assert.rejects(start({ accessHandler: 'admins only', methods: { POST: () => 1 } }),
    { name: 'TypeError', message: /accessHandler of the POST handler of endpoint x must be a function/ })
  await assert.rejects(app.status(), { code: 'MC_UNAVAILABLE' })
})

// A 3-member cluster in one Node process, through the public facade.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { freePort, tempDir, waitFor } from '../testlib/helpers.mjs'

const { App } = createRequire(import.meta.url)('../index.js')
const SCHEMA = ['CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL); CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter (id, n) VALUES (1, 0);']

test('three members: bootstrap, tokens, join, hooks, transactions, removal', async (t) => {
  const calls = []
  let rejectPreJoin = true
  const hooksFor = (member) => ({
    preInit: (state, args) => { calls.push([member, 'preInit', args.bootstrap]) },
    postBootstrap: async (state) => {
      await new Promise((resolve) => setImmediate(resolve))
      calls.push([member, 'postBootstrap', state.name])
    },
    preJoin: async () => {
      calls.push([member, 'preJoin'])
      if (member === 'm3' && rejectPreJoin) { rejectPreJoin = false; throw new Error('no joining today') }
    },
    postJoin: () => { calls.push([member, 'postJoin']) },
    onNewMember: (state, args) => { calls.push([member, 'onNewMember', args.new_member.name]) },
    onStart: () => { calls.push([member, 'onStart']) },
    preRemove: () => { calls.push([member, 'preRemove']) },
    postRemove: () => { calls.push([member, 'postRemove']) },
  })
  const apps = []
  const addresses = []
  for (const member of ['m1', 'm2', 'm3']) {
    const app = await App.open({ stateDir: await tempDir() })
    await app.start({ version: '1.0', hooks: hooksFor(member), schemaUpdates: SCHEMA })
    await app.ready({ timeoutMs: 60000 })
    apps.push(app)
    addresses.push(`127.0.0.1:${await freePort()}`)
  }
  t.after(() => Promise.all(apps.map((app) => app.stop())))
  const [a1, a2, a3] = apps

  await a1.newCluster('m1', addresses[0], { k: 'v' })
  assert.deepEqual(calls.filter(([m]) => m === 'm1').map(([, h]) => h), ['onStart', 'preInit', 'postBootstrap'])
  assert.equal((await a1.status()).name, 'm1')

  // Tokens.
  const token2 = await a1.newJoinToken('m2', { expireAfterMs: 600000 })
  assert.equal(typeof token2, 'string')
  assert.deepEqual((await a1.joinTokens()).map((tok) => tok.name), ['m2'])
  await a1.newJoinToken('gone')
  await a1.revokeJoinToken('gone')
  await assert.rejects(a1.revokeJoinToken('gone'), { code: 'MC_NOT_FOUND' })

  await a2.joinCluster('m2', addresses[1], token2)
  assert.deepEqual(calls.filter(([m]) => m === 'm2').map(([, h]) => h), ['onStart', 'preInit', 'preJoin', 'postJoin'])
  assert.ok(calls.some(([m, h, n]) => m === 'm1' && h === 'onNewMember' && n === 'm2'))

  // A rejecting preJoin rolls the join back; a retry with a new token succeeds.
  const failing = await a1.newJoinToken('m3')
  await assert.rejects(a3.joinCluster('m3', addresses[2], failing), (err) => {
    assert.equal(typeof err.code, 'string')
    assert.match(err.code, /^MC_/)
    assert.match(err.message, /no joining today/)
    assert.doesNotMatch(err.message, /hook-error/)
    // The hook's own error is the cause.
    assert.ok(err.cause instanceof Error)
    assert.equal(err.cause.message, 'no joining today')
    return true
  })
  await a3.ready({ timeoutMs: 60000 })
  await waitFor('m3 gone from the members', async () =>
    !(await a1.clusterMembers()).some((member) => member.name === 'm3'))
  const retry = await a1.newJoinToken('m3')
  await a3.joinCluster('m3', addresses[2], retry)
  await waitFor('three online members', async () =>
    (await a1.clusterMembers()).filter((member) => member.status === 'ONLINE').length === 3)

  // Transactions from two members, read back on the third.
  await a1.transaction(async (tx) => { await tx.execute('INSERT INTO items (id, name) VALUES (?, ?)', [1, 'from m1']) })
  const changed = await a2.transaction(async (tx) => tx.execute('INSERT INTO items (id, name) VALUES (?, ?)', [2, 'from m2']))
  assert.equal(changed, 1)
  const rows = await a3.transaction((tx) => tx.query('SELECT id, name FROM items ORDER BY id'))
  assert.deepEqual(rows, [[1, 'from m1'], [2, 'from m2']])
  const sql = await a3.sql('SELECT count(*) FROM items')
  assert.ok(JSON.stringify(sql).includes('2'))

  // Serializable read-modify-write from two members: no lost update.
  const increment = (app) => app.transaction(async (tx) => {
    const [[n]] = await tx.query('SELECT n FROM counter WHERE id = 1')
    await tx.execute('UPDATE counter SET n = ? WHERE id = 1', [n + 1])
  })
  const PER_MEMBER = 10
  await Promise.all([a1, a2].map(async (app) => { for (let i = 0; i < PER_MEMBER; i++) await increment(app) }))
  const [[total]] = await a3.transaction((tx) => tx.query('SELECT n FROM counter WHERE id = 1'))
  assert.equal(total, 2 * PER_MEMBER)

  // Errors: a thrown error leaves the transaction uncommitted and reaches the caller as is.
  const mine = new Error('mine')
  await assert.rejects(a1.transaction(async (tx) => {
    await tx.execute('INSERT INTO items (id, name) VALUES (3, ?)', ['never'])
    throw mine
  }), (err) => err === mine)
  await assert.rejects(a1.transaction((tx) => tx.query('SELECT * FROM nowhere')), { code: 'MC_INVALID_ARGUMENT' })
  const [[count]] = await a2.transaction((tx) => tx.query('SELECT count(*) FROM items'))
  assert.equal(count, 2)

  // Removal.
  await a1.removeClusterMember('m3')
  await waitFor('m3 removed', async () => (await a1.clusterMembers()).length === 2)
  assert.ok(calls.some(([m, h]) => m === 'm3' && h === 'preRemove'))
  await waitFor('postRemove on a remaining member', () =>
    calls.some(([m, h]) => m !== 'm3' && h === 'postRemove'))
})

test('error codes for bad input', async (t) => {
  const app = await App.open({ stateDir: await tempDir() })
  t.after(() => app.stop())
  await app.start({ version: '1.0' })
  await app.ready({ timeoutMs: 60000 })
  await assert.rejects(app.newCluster('bad name!', `127.0.0.1:${await freePort()}`), { code: 'MC_INVALID_ARGUMENT' })
  await assert.rejects(app.joinCluster('m9', `127.0.0.1:${await freePort()}`, 'not-a-token'), { code: 'MC_INVALID_ARGUMENT' })
  await assert.rejects(app.start({ version: '1.0' }), { code: 'MC_CONFLICT' })
  await assert.rejects(app.ready({ timeoutMs: -1 }), { code: 'MC_INVALID_ARGUMENT' })
  assert.throws(() => new App({}), TypeError)
  await app.stop()
  await app.stop()
  await assert.rejects(app.transaction(async () => {}), { code: 'MC_UNAVAILABLE' })
})

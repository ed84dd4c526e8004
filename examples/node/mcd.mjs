#!/usr/bin/env node
// mcd.mjs: a small cluster member in Node, the twin of examples/c/mcd.c and examples/python/mcd.py.
//
//   mcd.mjs <state_dir> bootstrap <name> <address>       start, bootstrap a new cluster, serve
//   mcd.mjs <state_dir> join <name> <address> <token>    start, join a cluster, serve
//   mcd.mjs <state_dir> run                              start an initialised member again, serve
//   mcd.mjs <state_dir> token <name>                     print a join token (asks the running member)
//   mcd.mjs <state_dir> query <method> <path>            call the REST API on the control socket
//   mcd.mjs <state_dir> stop                             stop the running member
//
// A serving member logs every hook, stores a greeting (its name and a sequence number) once it
// is a member, prints "mcd: ready" and serves until SIGINT/SIGTERM or `mcd.mjs <dir> stop`. It
// serves one extension endpoint, GET /1.0/greetings/{member} (404 for a member that has not
// greeted), which forwards `?target=<member>` to that member over mTLS:
//
//   mcd.mjs <state_dir> query GET '/1.0/greetings/c2?target=c3'
//
// In this repository the package is loaded from bindings-node (build it first: npm run build
// there); an application would `require('microcluster')`.
import { createRequire } from 'node:module'

const { App } = createRequire(import.meta.url)(process.env.MICROCLUSTER_MODULE || '../../bindings-node/index.js')

const SCHEMA = ['CREATE TABLE greetings (member TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL)']
const USAGE = 'usage: mcd.mjs <state_dir> bootstrap|join|run|token|query|stop ... (see the top of mcd.mjs)'

const log = (message) => console.log(`mcd: ${message}`)

const HOOKS = Object.fromEntries(
  ['preInit', 'postBootstrap', 'preJoin', 'postJoin', 'onNewMember', 'onStart', 'preRemove',
    'postRemove', 'onDaemonConfigUpdate'].map((name) => [
    name, (state, args) => log(`hook ${name} member=${state.name} args=${JSON.stringify(args)}`),
  ]))

/** GET /1.0/greetings/{member}: that member's greeting, read on this member. */
async function greeting ({ state, vars, caller }) {
  const rows = await state.transaction((tx) => tx.query('SELECT seq FROM greetings WHERE member = ?', [vars.member]))
  if (rows.length === 0) throw Object.assign(new Error(`no greeting from ${vars.member}`), { status: 404 })
  log(`endpoint greeting member=${vars.member} caller=${caller.kind}`)
  return { member: vars.member, seq: rows[0][0], served_by: state.name }
}

const SERVERS = [{
  name: 'mcd.example.com',
  serveUnix: true,
  endpoints: [{ path: 'greetings/{member}', name: 'greeting', proxyTarget: true, methods: { GET: greeting } }],
}]

async function serve (app, mode, args) {
  await app.start({ version: '1.0', hooks: HOOKS, schemaUpdates: SCHEMA, extensionServers: SERVERS })
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => { app.stop() })
  await app.ready({ timeoutMs: 120000 })
  if (mode === 'bootstrap') await app.newCluster(args[0], args[1])
  if (mode === 'join') await app.joinCluster(args[0], args[1], args[2])
  if (mode !== 'run') {
    await app.transaction(async (tx) => {
      const count = (await tx.query('SELECT count(*) FROM greetings'))[0][0]
      await tx.execute('INSERT INTO greetings (member, seq) VALUES (?, ?)', [args[0], count + 1])
    })
  }
  log('ready')
  await app.wait()
  log('stopped')
}

async function main ([stateDir, command, ...args]) {
  if (stateDir === undefined || command === undefined) throw Object.assign(new Error(USAGE), { usage: true })
  const app = new App({ stateDir })
  const arity = { bootstrap: 2, join: 3, run: 0, token: 1, query: 2, stop: 0 }
  if (arity[command] !== args.length) throw Object.assign(new Error(USAGE), { usage: true })
  if (['bootstrap', 'join', 'run'].includes(command)) return serve(app, command, args)
  if (command === 'token') console.log(await app.newJoinToken(args[0]))
  if (command === 'query') console.log(JSON.stringify(await app.query(args[0], args[1])))
  if (command === 'stop') await app.query('POST', '/core/control/shutdown')
}

main(process.argv.slice(2)).catch((err) => {
  console.error(err.usage ? err.message : `mcd: ${process.argv[3]} failed (${err.code}): ${err.message}`)
  process.exitCode = err.usage ? 2 : 1
})

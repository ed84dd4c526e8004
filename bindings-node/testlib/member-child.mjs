// A cluster member in its own process, driven by test/multiprocess.test.mjs.
//
//   node member-child.mjs <state_dir>
//
// It starts an app (every hook reports itself; one extension endpoint, GET /1.0/whoami, which
// forwards ?target=), then reads one command per line on stdin, a JSON array [command, ...args],
// and runs them one after the other. Everything it says is one JSON object per line on stdout:
//
//   {"event":"started"}                                      the app is ready for commands
//   {"event":"hook","hook":<name>,"member":<state.name>,"args":{...}}
//   {"event":"reply","command":<command>,"result":<JSON>}
//   {"event":"error","command":<command>,"code":<code>,"message":<message>}
//   {"event":"stopped"}                                      the last line; then the process exits
//
// Commands: bootstrap <name> <address>, join <name> <address> <token>, token <name>,
// execute <sql> <params>, query <sql> <params>, increment <times> (read-modify-write of the row
// counter.id = 1, one transaction per increment), request <method> <path>, remove <name>,
// members, status and stop. The end of the input also stops the member.
import { createRequire } from 'node:module'
import readline from 'node:readline'

const { App } = createRequire(import.meta.url)('../index.js')

const SCHEMA = [
  'CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value)',
  'CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)',
]
const HOOK_NAMES = ['preInit', 'postBootstrap', 'preJoin', 'postJoin', 'onNewMember', 'onStart',
  'preRemove', 'postRemove', 'onDaemonConfigUpdate', 'onReset']

// Writes to a pipe are synchronous on Linux, so lines never interleave.
const say = (event, fields = {}) => { process.stdout.write(JSON.stringify({ event, ...fields }) + '\n') }

const hooks = Object.fromEntries(HOOK_NAMES.map((name) => [
  name, (state, args) => { say('hook', { hook: name, member: state.name, args }) },
]))

const servers = [{
  name: 'child.example.com',
  serveUnix: true,
  endpoints: [{
    path: 'whoami',
    proxyTarget: true,
    methods: { GET: ({ state, caller }) => ({ served_by: state.name, caller }) },
  }],
}]

// A read-modify-write: only serializable transactions keep every increment.
const increment = async (tx) => {
  const [[n]] = await tx.query('SELECT n FROM counter WHERE id = 1')
  await tx.execute('UPDATE counter SET n = ? WHERE id = 1', [n + 1])
}

async function run (app, command, args) {
  switch (command) {
    case 'bootstrap': return app.newCluster(args[0], args[1])
    case 'join': return app.joinCluster(args[0], args[1], args[2])
    case 'token': return app.newJoinToken(args[0], { expireAfterMs: 300000 })
    case 'execute': return app.transaction((tx) => tx.execute(args[0], args[1]))
    case 'query': return app.transaction((tx) => tx.query(args[0], args[1]))
    case 'increment':
      for (let i = 0; i < args[0]; i++) await app.transaction(increment)
      return args[0]
    case 'request': return app.query(args[0], args[1])
    case 'remove': return app.removeClusterMember(args[0])
    case 'members': return (await app.clusterMembers()).map((member) => member.name).sort()
    case 'status': return app.status()
    default: throw new Error(`unknown command ${command}`)
  }
}

const app = await App.open({ stateDir: process.argv[2] })
await app.start({ version: '1.0', hooks, schemaUpdates: SCHEMA, heartbeatMs: 500, extensionServers: servers })
try {
  await app.ready({ timeoutMs: 60000 })
  say('started')
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const [command, ...args] = JSON.parse(line)
    if (command === 'stop') break
    try {
      say('reply', { command, result: (await run(app, command, args)) ?? null })
    } catch (err) {
      say('error', { command, code: err.code, message: err.message })
    }
  }
} finally {
  await app.stop()
}
say('stopped')

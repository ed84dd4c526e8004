// Child of exit.test.mjs: bootstraps a one-member cluster with hooks, stops, and must exit.
import { createRequire } from 'node:module'
import { freePort, tempDir } from './helpers.mjs'

const { App } = createRequire(import.meta.url)('../index.js')
const app = await App.open({ stateDir: await tempDir() })
await app.start({ version: '1.0', hooks: { onStart: async () => {}, onHeartbeat: () => {} }, heartbeatMs: 200 })
await app.ready({ timeoutMs: 60000 })
await app.newCluster('solo', `127.0.0.1:${await freePort()}`)
console.log('bootstrapped')
await app.stop()
console.log('stopped')

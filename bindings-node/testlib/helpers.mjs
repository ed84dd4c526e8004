// Shared test helpers: free ports, temp dirs, waiting on conditions.
import net from 'node:net'
import fs from 'node:fs/promises'
import { rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

// Ports handed out by this process: the kernel may hand a released port out again.
const givenPorts = new Set()

export async function freePort () {
  for (;;) {
    const server = net.createServer()
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    const { port } = server.address()
    await new Promise((resolve) => server.close(resolve))
    if (!givenPorts.has(port)) {
      givenPorts.add(port)
      return port
    }
  }
}

// Temporary directories made by this process, removed when it exits.
const tempDirs = []
process.on('exit', () => {
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
    } catch (err) {
      console.error(`could not remove ${dir}: ${err.message}`)
    }
  }
})

export async function tempDir () {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mc-node-'))
  tempDirs.push(dir)
  return dir
}

export async function waitFor (what, check, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

// The official e2b JS SDK against corral, pointed there only by E2B_* environment variables.
// Run by tests/compat/test_e2b_js.py; prints "ok <step>" per step and exits non-zero on failure.
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError, SandboxError } from 'e2b'

const step = (name) => console.log(`ok ${name}`)

const sbx = await Sandbox.create({ metadata: { suite: 'js' } })
try {
  assert.match(sbx.sandboxId, /^[a-z0-9]+$/)
  step('create')

  const r = await sbx.commands.run('echo hello; echo oops >&2')
  assert.equal(r.stdout, 'hello\n')
  assert.equal(r.stderr, 'oops\n')
  assert.equal(r.exitCode, 0)
  step('commands.run')

  await assert.rejects(sbx.commands.run('exit 3'), (e) => e instanceof CommandExitError && e.exitCode === 3)
  step('commands.run exit code')

  const bg = await sbx.commands.run('sleep 60', { background: true })
  assert.ok(bg.pid > 0)
  const listed = await sbx.commands.list()
  assert.ok(listed.some((p) => p.pid === bg.pid))
  assert.equal(await sbx.commands.kill(bg.pid), true)
  step('background, list, kill')

  const out = []
  const cat = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: (d) => out.push(d) })
  await sbx.commands.sendStdin(cat.pid, 'piped\n')
  await sbx.commands.closeStdin(cat.pid)
  const catResult = await cat.wait()
  assert.equal(catResult.stdout, 'piped\n')
  step('stdin')

  await sbx.files.write('/home/user/js/note.txt', 'from js')
  assert.equal(await sbx.files.read('/home/user/js/note.txt'), 'from js')
  const entries = await sbx.files.list('/home/user/js')
  assert.deepEqual(entries.map((e) => e.name), ['note.txt'])
  assert.equal(await sbx.files.exists('/home/user/js/missing'), false)
  await sbx.files.rename('/home/user/js/note.txt', '/home/user/js/moved.txt')
  await sbx.files.remove('/home/user/js/moved.txt')
  assert.equal(await sbx.files.exists('/home/user/js/moved.txt'), false)
  step('files')

  await sbx.files.makeDir('/home/user/watched')
  const seen = []
  const watcher = await sbx.files.watchDir('/home/user/watched', (e) => seen.push(e), { recursive: true })
  await sbx.files.write('/home/user/watched/w.txt', 'w')
  const until = Date.now() + 10_000
  while (!seen.some((e) => e.name === 'w.txt')) {
    assert.ok(Date.now() < until, 'no watch event for w.txt')
    await new Promise((r) => setTimeout(r, 50))
  }
  await watcher.stop()
  step('watchDir')

  const chunks = []
  const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => chunks.push(Buffer.from(d)) })
  await sbx.pty.resize(term.pid, { cols: 100, rows: 30 })
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty size; echo $((6*7)); exit\n'))
  await term.wait()
  const typed = Buffer.concat(chunks).toString()
  assert.ok(typed.includes('30 100') && typed.includes('42'), typed)
  step('pty')

  const up = await sbx.uploadUrl('/home/user/uploaded.txt')
  const form = new FormData()
  form.append('file', new Blob(['via url']), '/home/user/uploaded.txt')
  assert.equal((await fetch(up, { method: 'POST', body: form })).status, 200)
  assert.equal(await sbx.files.read('/home/user/uploaded.txt'), 'via url')
  step('upload url')

  const url = await sbx.downloadUrl('/home/user/.profile')
  const res = await fetch(url)
  assert.equal(res.status, 200)
  assert.ok((await res.text()).length > 0)
  step('download url')

  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.equal(info.metadata.suite, 'js')
  await sbx.setTimeout(120_000)
  const page = await Sandbox.list({ query: { metadata: { suite: 'js' } } }).nextItems()
  assert.ok(page.some((s) => s.sandboxId === sbx.sandboxId))
  step('info, setTimeout, list')

  const again = await Sandbox.connect(sbx.sandboxId)
  assert.equal((await again.commands.run('echo again')).stdout, 'again\n')
  step('connect')

  await assert.rejects(sbx.pause(), (e) => e instanceof SandboxError && /not supported by corral/.test(e.message))
  step('pause refused')
} finally {
  await sbx.kill()
}
assert.equal(await sbx.isRunning(), false)
step('kill')

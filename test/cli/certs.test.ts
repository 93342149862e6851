import t from 'tap'
import { execFileSync } from 'node:child_process'
import { chmod, mkdtemp, stat, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { X509Certificate } from 'node:crypto'
import { runShepherd } from '../helpers/cli.js'

const openssl = (...args: string[]): string => execFileSync('openssl', args, { encoding: 'utf8' })

t.test('gen-ca and gen-device-cert make certificates that openssl verifies', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-cli-'))
  const caDir = path.join(dir, 'priv/ca')
  const devicesDir = path.join(dir, 'priv/devices')

  const ca = await runShepherd(['gen-ca', '--dir', caDir])
  t.equal(ca.code, 0, ca.stderr)
  const caPem = path.join(caDir, 'fleet_ca.pem')
  const caKey = path.join(caDir, 'fleet_ca_key.pem')
  t.equal((await stat(caKey)).mode & 0o777, 0o600, 'CA key is private')
  const caText = openssl('x509', '-in', caPem, '-noout', '-text')
  t.match(caText, /Subject: CN ?= ?Fleet CA/)
  t.match(caText, /CA:TRUE/)
  t.match(caText, /Certificate Sign, CRL Sign/)
  t.match(caText, /ASN1 OID: prime256v1/)
  const caCert = new X509Certificate(await readFile(caPem))
  const [from, to] = [new Date(caCert.validFrom), new Date(caCert.validTo)]
  t.same([to.getUTCFullYear() - from.getUTCFullYear(), to.getUTCMonth(), to.getUTCDate()], [10, from.getUTCMonth(), from.getUTCDate()], `CA valid 10 calendar years (${caCert.validFrom} – ${caCert.validTo})`)

  const device = await runShepherd(['gen-device-cert', '--serial', 'rpi-0001', '--ca-dir', caDir, '--dir', devicesDir])
  t.equal(device.code, 0, device.stderr)
  const deviceDir = path.join(devicesDir, 'rpi-0001')
  t.equal((await stat(path.join(deviceDir, 'device_key.pem'))).mode & 0o777, 0o600, 'device key is private')
  t.match(openssl('verify', '-CAfile', caPem, path.join(deviceDir, 'device_cert.pem')), /device_cert\.pem: OK/)
  t.match(openssl('x509', '-in', path.join(deviceDir, 'device_cert.der'), '-inform', 'DER', '-noout', '-subject'), /CN ?= ?rpi-0001/)
  const deviceCert = new X509Certificate(await readFile(path.join(deviceDir, 'device_cert.der')))
  const days = (Date.parse(deviceCert.validTo) - Date.parse(deviceCert.validFrom)) / 86_400_000
  t.equal(Math.round(days), 1825, 'valid 5 years by default')
  // the key in device_key.pem belongs to the certificate
  const keyPub = openssl('pkey', '-in', path.join(deviceDir, 'device_key.pem'), '-pubout')
  const certPub = openssl('x509', '-in', path.join(deviceDir, 'device_cert.pem'), '-noout', '-pubkey')
  t.equal(keyPub, certPub)

  const short = await runShepherd(['gen-device-cert', '--serial', 'rpi-0002', '--ca-dir', caDir, '--dir', devicesDir, '--days', '30'])
  t.equal(short.code, 0)
  const shortCert = new X509Certificate(await readFile(path.join(devicesDir, 'rpi-0002', 'device_cert.pem')))
  t.equal(Math.round((Date.parse(shortCert.validTo) - Date.parse(shortCert.validFrom)) / 86_400_000), 30)

  t.test('gen-ca refuses to overwrite without --force', async (t) => {
    const before = await readFile(caPem, 'utf8')
    const again = await runShepherd(['gen-ca', '--dir', caDir])
    t.equal(again.code, 1)
    t.match(again.stderr, /already exists.*--force/s)
    t.equal(await readFile(caPem, 'utf8'), before, 'CA untouched')
    await chmod(path.join(caDir, 'fleet_ca_key.pem'), 0o644)
    const forced = await runShepherd(['gen-ca', '--dir', caDir, '--force'])
    t.equal(forced.code, 0)
    t.not(await readFile(caPem, 'utf8'), before, 'CA replaced')
    t.equal((await stat(path.join(caDir, 'fleet_ca_key.pem'))).mode & 0o777, 0o600, 'the new key is 0600 even over a 0644 file')
  })
})

t.test('usage errors exit 2 with help; failures exit 1 with a message', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-cli-'))
  for (const [args, pattern] of [
    [['gen-device-cert', '--serial', 'bad/serial'], /not a valid serial/],
    [['gen-device-cert', '--serial', 'a b'], /not a valid serial/],
    [['gen-device-cert', '--serial', 'x'.repeat(65)], /not a valid serial/],
    [['gen-device-cert', '--serial', '..'], /cannot name a directory/],
    [['gen-device-cert'], /--serial is required/],
    [['gen-device-cert', '--serial', 'ok', '--days', 'ten'], /--days/],
    [['gen-ca', '--bogus'], /Unknown option/],
    [['frobnicate'], /unknown command/],
    [[], /Usage: shepherd/]
  ] as const) {
    const result = await runShepherd([...args], { cwd: dir })
    t.equal(result.code, 2, `${args.join(' ')} exits 2`)
    t.match(result.stderr + result.stdout, pattern)
    t.match(result.stderr + result.stdout, /Usage: shepherd/, 'prints the help text')
  }
  const noCa = await runShepherd(['gen-device-cert', '--serial', 'dev-1', '--ca-dir', path.join(dir, 'nowhere')], { cwd: dir })
  t.equal(noCa.code, 1)
  t.match(noCa.stderr, /no Fleet CA in .*gen-ca/)
  const bare = await runShepherd([])
  t.same([bare.code, bare.stdout], [2, ''], 'no command: bad usage, the help on stderr like every usage error')
  const help = await runShepherd(['--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /gen-device-cert/)
})

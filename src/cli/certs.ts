// `shepherd gen-ca` and `shepherd gen-device-cert`: the Fleet CA and device certificates on disk.
import path from 'node:path'
import { CommandError, UsageError } from '../errors.js'
import { createFleetCa, fleetCaExists, issueCertificate, readFleetCa, writeDeviceCredentials, writeFleetCa } from '../certs/pki.js'
import { isValidSerial } from '../topics.js'
import { parseCommand, type Output } from './main.js'

export async function genCa (args: string[], output: Output): Promise<void> {
  const { values } = parseCommand(args, { dir: { type: 'string', default: 'priv/ca' }, force: { type: 'boolean', default: false } })
  const dir = path.resolve(values.dir)
  if (!values.force && await fleetCaExists(dir)) {
    throw new CommandError(`a Fleet CA already exists in ${dir}; replacing it orphans every device certificate it signed. Use --force to overwrite it`)
  }
  const ca = await createFleetCa()
  const { certPath, keyPath } = await writeFleetCa(dir, ca)
  output.out(`Fleet CA created:\n  certificate ${certPath}\n  key         ${keyPath} (mode 0600: keep it secret)`)
}

export async function genDeviceCert (args: string[], output: Output): Promise<void> {
  const { values } = parseCommand(args, {
    serial: { type: 'string' },
    'ca-dir': { type: 'string', default: 'priv/ca' },
    dir: { type: 'string', default: 'priv/devices' },
    days: { type: 'string', default: '1825' }
  })
  if (values.serial === undefined) throw new UsageError('--serial is required')
  if (!isValidSerial(values.serial)) throw new UsageError(`--serial ${JSON.stringify(values.serial)} is not a valid serial: 1-64 characters of A-Z a-z 0-9 _ - .`)
  // valid serials, but as directory names they are the devices directory and its parent
  if (/^\.+$/.test(values.serial!)) throw new UsageError(`--serial ${JSON.stringify(values.serial)} cannot name a directory under --dir: use a serial with a letter, digit, _ or -`)
  const days = Number(values.days)
  if (!/^\d+$/.test(values.days) || days < 1 || days > 36500) throw new UsageError('--days must be a whole number of days from 1 to 36500')
  const caDir = path.resolve(values['ca-dir'])
  const ca = await readFleetCa(caDir).catch((error: NodeJS.ErrnoException) => {
    throw new CommandError(error.code === 'ENOENT' ? `no Fleet CA in ${caDir}; create one with "shepherd gen-ca" or pass --ca-dir` : `cannot read the Fleet CA in ${caDir}: ${error.message}`)
  })
  const issued = await issueCertificate(ca, { commonName: values.serial, days })
  const files = await writeDeviceCredentials(path.resolve(values.dir), values.serial, issued)
  output.out(`device certificate for ${values.serial} created:\n  ${files.pemPath}\n  ${files.derPath}\n  ${files.keyPath} (mode 0600)`)
}

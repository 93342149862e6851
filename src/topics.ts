// The topic grammar of contract §3 in one place: serial syntax, building and parsing device topics.

export const SERIAL_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/
export const DEVICE_TOPIC_PREFIX = 'shepherd/devices/'

export type DeviceTopicLeaf =
  | 'status' | 'info' | 'metrics' | 'commands' | 'replies' | 'firmware' | 'update_status' | 'errors'

const LEAVES: ReadonlySet<string> = new Set<DeviceTopicLeaf>(
  ['status', 'info', 'metrics', 'commands', 'replies', 'firmware', 'update_status', 'errors'])

export function isValidSerial (serial: unknown): serial is string {
  return typeof serial === 'string' && SERIAL_PATTERN.test(serial)
}

export function deviceTopic (serial: string, leaf: DeviceTopicLeaf): string {
  return `${DEVICE_TOPIC_PREFIX}${serial}/${leaf}`
}

export interface ParsedDeviceTopic { serial: string, leaf: DeviceTopicLeaf }

/** Parses `shepherd/devices/<serial>/<leaf>`; anything else (wildcards, extra levels) is undefined. */
export function parseDeviceTopic (topic: string): ParsedDeviceTopic | undefined {
  if (!topic.startsWith(DEVICE_TOPIC_PREFIX)) return undefined
  const rest = topic.slice(DEVICE_TOPIC_PREFIX.length)
  const slash = rest.indexOf('/')
  if (slash < 0) return undefined
  const serial = rest.slice(0, slash)
  const leaf = rest.slice(slash + 1)
  if (!isValidSerial(serial) || !LEAVES.has(leaf)) return undefined
  return { serial, leaf: leaf as DeviceTopicLeaf }
}

// The device topic ACL of contract §3: a device publishes only to its own info, metrics, replies
// and update_status, and subscribes only to its own commands, firmware and errors, without
// wildcards. Everything else — other devices, $SYS, its own status — is refused.
import { deviceTopic, type DeviceTopicLeaf } from '../topics.js'

const PUBLISH_LEAVES: readonly DeviceTopicLeaf[] = ['info', 'metrics', 'replies', 'update_status']
const SUBSCRIBE_LEAVES: readonly DeviceTopicLeaf[] = ['commands', 'firmware', 'errors']

export type AclDecision = { ok: true, leaf: DeviceTopicLeaf } | { ok: false, reason: string }

function decide (serial: string, topic: string, leaves: readonly DeviceTopicLeaf[], verb: string): AclDecision {
  for (const leaf of leaves) {
    if (topic === deviceTopic(serial, leaf)) return { ok: true, leaf }
  }
  return { ok: false, reason: `a device may ${verb} only its own ${leaves.join(', ')} topics` }
}

export function authorizeDevicePublish (serial: string, topic: string): AclDecision {
  return decide(serial, topic, PUBLISH_LEAVES, 'publish to')
}

export function authorizeDeviceSubscribe (serial: string, topicFilter: string): AclDecision {
  return decide(serial, topicFilter, SUBSCRIBE_LEAVES, 'subscribe to')
}

/** The will a device may set: its own status topic (the server publishes the actual message). */
export function isDeviceWillTopic (serial: string, topic: string): boolean {
  return topic === deviceTopic(serial, 'status')
}

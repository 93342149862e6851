// The ports the domain uses to reach the outside without knowing who implements them.

export interface PublishOptions { qos: 0 | 1, retain: boolean }

/** Publishes a message through the broker (implemented by mqtt/broker.ts). */
export type Publish = (topic: string, payload: string | Buffer, options: PublishOptions) => Promise<void>

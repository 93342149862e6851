// Packages that ship no type declarations.
declare module 'aedes-persistence-redis' {
  const createPersistence: (options: { conn?: unknown }) => unknown
  export default createPersistence
}

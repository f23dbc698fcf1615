/**
 * Service naming: `ServiceRegistry` publishes endpoints, `ServiceResolver` keeps a live list of
 * them and picks one per call.
 *
 * Layout (etcd's `client/v3/naming/endpoints`, which Go's gRPC `etcd:///` resolver reads): the
 * endpoint `id` of `service` is the key `service + "/" + id`, bound to a session's lease, whose
 * value is the JSON of etcd's `naming.Update`: `{"Op":0,"Addr":"host:port","Metadata":…}` (`Op` 0
 * is Add; `Metadata` is `null` when absent, as Go's encoding/json writes a nil interface). Go's
 * endpoint manager lists the target's prefix and then watches it from the list's revision + 1;
 * the resolver here does the same, and re-reads (a resync) when that history is compacted.
 */
export {
  decodeEndpoint,
  type Endpoint,
  encodeEndpoint,
} from './internal/naming-common.js';
export {
  type HealthCheckFn,
  type HealthCheckOptions,
  type RegisterOptions,
  RegistrationState,
  ServiceRegistration,
  ServiceRegistry,
  type SessionProvider,
} from './naming-registry.js';
export {
  type PickOptions,
  PickStrategy,
  type ResolverOptions,
  resolveService,
  type ServiceChange,
  type ServiceInstance,
  ServiceResolver,
} from './naming-resolver.js';

-- podkey keyd store, schema 2: database leases (one per pod and object).
-- doc is the lease as JSON (its password wrapped under the HSM KEK).
CREATE TABLE leases (
  key     text    PRIMARY KEY,
  pod_uid text    NOT NULL,
  doc     bytea   NOT NULL,
  version integer NOT NULL
);
CREATE INDEX leases_pod_uid ON leases (pod_uid);

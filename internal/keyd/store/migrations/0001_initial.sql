-- podkey keyd store, schema 1. Times are Unix nanoseconds (bigint):
-- revocation cutoffs and access key issue times compare to the nanosecond,
-- finer than timestamptz's microseconds.
CREATE TABLE policy (
  id  integer PRIMARY KEY CHECK (id = 1),
  doc bytea   NOT NULL
);
CREATE TABLE secrets (
  namespace text    NOT NULL,
  name      text    NOT NULL,
  wrapped   bytea   NOT NULL,
  size      integer NOT NULL,
  created   bigint  NOT NULL,
  version   integer NOT NULL,
  PRIMARY KEY (namespace, name)
);
CREATE TABLE revocations (
  pod_uid text   PRIMARY KEY,
  revoked bigint NOT NULL,
  until   bigint NOT NULL
);
CREATE TABLE renewals (
  seq             bigserial PRIMARY KEY,
  namespace       text   NOT NULL,
  service_account text   NOT NULL,
  pod_uid         text   NOT NULL,
  at              bigint NOT NULL,
  until           bigint NOT NULL
);
CREATE TABLE audit (
  seq  bigint PRIMARY KEY,
  data bytea  NOT NULL
);
CREATE TABLE pods (
  pod_uid text   PRIMARY KEY,
  node    text   NOT NULL,
  until   bigint NOT NULL
);
CREATE TABLE nonces (
  key   bytea  PRIMARY KEY,
  until bigint NOT NULL
);

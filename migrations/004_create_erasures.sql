-- The erasure ledger: one row per user erased through
-- `Storage::erase_user` (or `selfrag erase-user`), written only once every
-- store has forgotten the user. It holds no personal data: the user's id,
-- when, and which vectors the erasure covered (tenant names and a filter
-- as the application gave them; keep tenant names opaque).
--
-- A restore re-applies every erasure its backup does not hold, so that a
-- backup taken before an erasure cannot bring the user back
-- (BACKUP_STRATEGY.md, "Erasures and restores"). `seq` orders the ledger;
-- a backup's manifest records the highest `seq` it contains.
CREATE TABLE erasures (
    seq       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   uuid        NOT NULL UNIQUE,
    erased_at timestamptz NOT NULL DEFAULT now(),
    vectors   jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(vectors) = 'array')
);

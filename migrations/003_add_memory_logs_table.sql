-- Append-only memory logs, one stream per user.
CREATE TABLE memory_logs (
    id          uuid         PRIMARY KEY,
    user_id     uuid         NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    "timestamp" timestamptz  NOT NULL,
    type        varchar(64)  NOT NULL,
    content     text         NOT NULL,
    meta_data   jsonb        NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(meta_data) = 'object')
);

-- "One user's logs in a time range, newest first", keyset-paginated on
-- (timestamp, id): equality on user_id, then both sort keys descending, so
-- the query is one index range scan with no sort, and a page costs the same
-- however deep it is. The foreign key's cascade uses it too.
CREATE INDEX memory_logs_user_timestamp_idx ON memory_logs (user_id, "timestamp" DESC, id DESC);

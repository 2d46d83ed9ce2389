-- Users own everything else: deleting a user cascades to its memory logs and
-- sessions (see the foreign keys in 002 and 003).
CREATE TABLE users (
    id         uuid        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

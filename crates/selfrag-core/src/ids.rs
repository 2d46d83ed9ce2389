//! Id newtypes. Fields are private: an id is made by its constructor or parsed
//! and checked, never assembled by hand.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID (for ids that come from a database or
            /// another system).
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// Parses the hyphenated (or simple) UUID form.
            ///
            /// # Errors
            /// [`Error::InvalidInput`] naming the id when `s` is not a UUID.
            pub fn parse(s: &str) -> Result<Self> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| Error::invalid($field, format!("not a UUID: {e}")))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A user. Everything a user owns is reached only through this id.
    ///
    /// [`UserId::new`] makes a UUIDv7 (time-ordered, so new users land at the
    /// end of B-tree indexes); ids from an existing identity system can be
    /// wrapped with [`UserId::from_uuid`].
    UserId,
    "user_id"
);

uuid_id!(
    /// A memory log record: a UUIDv7, so ids sort by creation time.
    MemoryLogId,
    "memory_log_id"
);

uuid_id!(
    /// A session. [`SessionId::generate`] draws 122 random bits from the
    /// operating system's RNG (a UUIDv4 from `getrandom`), so ids cannot be
    /// guessed from other ids.
    SessionId,
    "session_id"
);

uuid_id!(
    /// A chunk in a vector index. Writes are idempotent by chunk id: upserting
    /// the same id again replaces the chunk.
    ///
    /// [`ChunkId::for_chunk`] derives the id from the document id and the
    /// chunk's position (UUIDv5), so re-indexing a document overwrites its old
    /// chunks instead of duplicating them.
    ChunkId,
    "chunk_id"
);

impl UserId {
    /// A new, time-ordered user id (UUIDv7).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl MemoryLogId {
    /// A new, time-ordered memory log id (UUIDv7).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl SessionId {
    /// A new session id with 122 bits from the OS RNG.
    pub fn generate() -> Self {
        // uuid's v4 uses `getrandom` (the OS RNG) unless its `fast-rng`
        // feature is on, which this workspace never enables.
        Self(Uuid::new_v4())
    }
}

/// Namespace for [`ChunkId::for_chunk`] (a fixed random UUID).
const CHUNK_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_63a0_2b9e_4c55_9a1e_35c4_7f0b_d2e1);
/// Namespace for [`crate::vector::point_id`].
pub(crate) const POINT_NAMESPACE: Uuid = Uuid::from_u128(0x0c9b_4e2f_8d7a_4f31_b6a5_1e2d_3c4b_5a69);

impl ChunkId {
    /// A new random chunk id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The deterministic id of chunk `chunk_index` of `document_id`.
    pub fn for_chunk(document_id: &str, chunk_index: u32) -> Self {
        let name = format!("{document_id}\u{1f}{chunk_index}");
        Self(Uuid::new_v5(&CHUNK_NAMESPACE, name.as_bytes()))
    }
}

/// The owner of a vector corpus: every [`crate::VectorIndex`] call is scoped
/// to one tenant, and no call sees another tenant's chunks.
///
/// A tenant is usually a user ([`Tenant::from`] a [`UserId`]), or a named
/// shared corpus ([`Tenant::new`]).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

impl Tenant {
    /// The longest tenant name, in bytes.
    pub const MAX_LEN: usize = 128;

    /// A named tenant.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`tenant`) when the name is empty, longer than
    /// [`Tenant::MAX_LEN`] bytes, or holds control characters.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::invalid("tenant", "must not be empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::invalid("tenant", format!("is {} bytes, the limit is {}", name.len(), Self::MAX_LEN)));
        }
        if name.chars().any(char::is_control) {
            return Err(Error::invalid("tenant", "must not contain control characters"));
        }
        Ok(Self(name))
    }

    /// The tenant's name, as stored in the `tenant` payload field.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<UserId> for Tenant {
    fn from(user: UserId) -> Self {
        Self(format!("u:{user}"))
    }
}

impl TryFrom<String> for Tenant {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Tenant> for String {
    fn from(t: Tenant) -> String {
        t.0
    }
}

impl FromStr for Tenant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tenant({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_display_and_serde() {
        let id = MemoryLogId::new();
        assert_eq!(id.to_string().parse::<MemoryLogId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<MemoryLogId>(&json).unwrap(), id);
    }

    #[test]
    fn parse_names_the_id() {
        let err = "nope".parse::<UserId>().unwrap_err();
        assert_eq!(err.field(), Some("user_id"));
    }

    #[test]
    fn memory_log_ids_are_time_ordered() {
        let a = MemoryLogId::new();
        let b = MemoryLogId::new();
        assert!(a < b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn session_ids_are_random_v4() {
        let a = SessionId::generate();
        assert_eq!(a.as_uuid().get_version_num(), 4);
        assert_ne!(a, SessionId::generate());
    }

    #[test]
    fn chunk_ids_are_deterministic_per_document_and_index() {
        assert_eq!(ChunkId::for_chunk("doc", 1), ChunkId::for_chunk("doc", 1));
        assert_ne!(ChunkId::for_chunk("doc", 1), ChunkId::for_chunk("doc", 2));
        assert_ne!(ChunkId::for_chunk("doc1", 1), ChunkId::for_chunk("doc", 11));
    }

    #[test]
    fn tenant_validation() {
        assert!(Tenant::new("").is_err());
        assert!(Tenant::new("a\nb").is_err());
        assert!(Tenant::new("x".repeat(129)).is_err());
        assert_eq!(Tenant::new("docs").unwrap().as_str(), "docs");
        let user = UserId::new();
        assert_eq!(Tenant::from(user).as_str(), format!("u:{user}"));
        assert!(serde_json::from_str::<Tenant>("\"\"").is_err());
    }
}

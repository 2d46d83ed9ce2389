//! Contracts that span two stores of a [`Storage`](crate::Storage): when
//! users live in one backend (Postgres, or in process) and sessions in
//! another (Redis), deleting a user must still end its sessions, and a
//! session must not be created for a user that does not exist.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use selfrag_core::{Error, NewSession, Result, Session, SessionId, SessionStore, UserId, UserStore};
use serde_json::{Map, Value};

/// A [`UserStore`] whose `delete_user` also revokes the user's sessions in a
/// session store of another backend.
///
/// Order: sessions are revoked first, then the user is deleted, then the
/// sessions are revoked once more (a session created between the first
/// revoke and the deletion, by a call that had already seen the user, is
/// caught by the second). If a revoke fails, the call fails with that error
/// and the user is not deleted (first revoke) or already deleted (second):
/// calling `delete_user` again finishes the job either way, since revoking
/// is idempotent and revoking for a missing user is not an error.
pub(crate) struct CascadingUsers {
    pub(crate) users: Arc<dyn UserStore>,
    pub(crate) sessions: Arc<dyn SessionStore>,
}

impl fmt::Debug for CascadingUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CascadingUsers").field("users", &self.users).field("sessions", &self.sessions).finish()
    }
}

#[async_trait]
impl UserStore for CascadingUsers {
    async fn create_user(&self) -> Result<UserId> {
        self.users.create_user().await
    }

    async fn ensure_user(&self, id: UserId) -> Result<bool> {
        self.users.ensure_user(id).await
    }

    async fn user_exists(&self, id: UserId) -> Result<bool> {
        self.users.user_exists(id).await
    }

    async fn delete_user(&self, id: UserId) -> Result<bool> {
        self.sessions.revoke_all(id).await?;
        let existed = self.users.delete_user(id).await?;
        self.sessions.revoke_all(id).await?;
        Ok(existed)
    }
}

/// A [`SessionStore`] of another backend than the users, which refuses to
/// create a session for a user the [`UserStore`] does not know
/// ([`Error::NotFound`], as the Postgres and local session stores do).
/// Everything else is forwarded: a deleted user's sessions are revoked by
/// [`CascadingUsers`].
pub(crate) struct UserCheckedSessions {
    pub(crate) users: Arc<dyn UserStore>,
    pub(crate) sessions: Arc<dyn SessionStore>,
}

impl fmt::Debug for UserCheckedSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserCheckedSessions").field("users", &self.users).field("sessions", &self.sessions).finish()
    }
}

#[async_trait]
impl SessionStore for UserCheckedSessions {
    async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
        if !self.users.user_exists(user).await? {
            return Err(Error::user_not_found(user));
        }
        self.sessions.create(user, session).await
    }

    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        self.sessions.get(user, id).await
    }

    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        self.sessions.touch(user, id).await
    }

    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>> {
        self.sessions.set_data(user, id, data).await
    }

    async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>> {
        self.sessions.list_recent(user, limit).await
    }

    async fn list(&self, user: UserId) -> Result<Vec<Session>> {
        self.sessions.list(user).await
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
        self.sessions.revoke(user, id).await
    }

    async fn revoke_all(&self, user: UserId) -> Result<u64> {
        self.sessions.revoke_all(user).await
    }
}

//! The API a service is written against, and all of it.
//!
//! A service implements [`Service`] and is added to a
//! [`crate::catalogue::Catalogue`] with one line. When it starts it gets a
//! [`ServiceContext`]: this node's id, a [`Namespace`] of the store bound to
//! its own tables and budget, and the capabilities it declared and was
//! granted. The caller of each request reaches its handlers as a
//! [`Principal`] request extension, once the ingress has checked the
//! credentials and the route's [`Access`].
//!
//! Nothing here opens the database, reaches another namespace, or holds a
//! secret or a signing key: the store is a crate of its own
//! (`flotilla-store`) that this API does not expose, and minting
//! credentials is the `accounts` service's capability alone.
//!
//! What a service is given can be used, and nothing else. The grants behind
//! a capability are private to flotilla:
//!
//! ```compile_fail,E0616
//! fn mint(ctx: flotilla::service::ServiceContext) {
//!     let _ = ctx.grants.credentials;
//! }
//! ```
//!
//! and there is no path from this crate's API to the database itself:
//!
//! ```compile_fail,E0603
//! let _ = flotilla::store::Store::open;
//! ```
//!
//! while the service's own namespace is its to use:
//!
//! ```
//! use flotilla::service::{Namespace, ServiceContext, Statement};
//! fn own(ctx: ServiceContext) -> Namespace {
//!     let _ = Statement::new("SELECT 1", vec![]);
//!     ctx.store
//! }
//! ```

pub use crate::{
    auth::authz::{Access, Credential, Principal},
    catalogue::api_error::ApiError,
    catalogue::{
        Capability, ClientAddr, Doc, Idempotence, Routes, Service, ServiceContext, StartError,
    },
    store::{Budget, Migration, Namespace, Outcome, Statement, StoreError, Value},
};

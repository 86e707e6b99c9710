//! parleyd: the conversations of a two-sided marketplace, carried over
//! WebSocket, long-poll and HTTP, stored in sled. See README.md for the tour.

pub mod analytics;
pub mod api;
pub mod auth;
pub mod automation;
pub mod clock;
pub mod config;
pub mod contact;
pub mod domain;
pub mod error;
pub mod faults;
pub mod feed;
pub mod hub;
pub mod model;
pub mod moderation;
pub mod notifications;
pub mod pipeline;
pub mod rules;
pub mod ruletest;
pub mod server;
pub mod service;
pub mod store;
pub mod supervisor;
pub mod telemetry;

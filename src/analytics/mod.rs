//! Analytics: what the conversations, sequences and experiments achieve,
//! kept incrementally from the domain events.

pub mod experiments;

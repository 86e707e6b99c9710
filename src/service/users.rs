//! Users and listings, as the marketplace's backend tells them.

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::model::{Listing, ListingInput, User, UserInput};

use super::App;

impl App {
    pub fn put_user(&self, caller: Caller, id: &str, input: UserInput) -> Result<User, ApiError> {
        caller.require(&[Role::Service])?;
        let user = input.into_user(id, self.clock.now())?;
        self.store.put_user(&user)?;
        Ok(user)
    }

    pub fn put_listing(
        &self,
        caller: Caller,
        id: &str,
        input: ListingInput,
    ) -> Result<Listing, ApiError> {
        caller.require(&[Role::Service])?;
        let listing = input.into_listing(id, self.clock.now())?;
        self.store.put_listing(&listing)?;
        Ok(listing)
    }
}

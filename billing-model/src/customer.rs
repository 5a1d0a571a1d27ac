//! The ticket API's user id, as tollgate bills it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest customer id accepted, in bytes.
pub const MAX_CUSTOMER_ID_LEN: usize = 128;

/// A customer of the ticket API: non-empty, at most 128 bytes of `[A-Za-z0-9._:@-]`.
///
/// The alphabet leaves out `{`, `}` and whitespace because the id is placed inside a
/// Redis Cluster hash tag (`{customer}`) and in log lines; an id with a brace would
/// move a customer's keys to another slot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CustomerId(String);

/// Why a text is not a valid customer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerIdError {
    /// The id is empty.
    #[error("customer id must not be empty")]
    Empty,
    /// The id is longer than [`MAX_CUSTOMER_ID_LEN`] bytes.
    #[error("customer id is {0} bytes long, more than the {MAX_CUSTOMER_ID_LEN} allowed")]
    TooLong(usize),
    /// The id holds a character outside `[A-Za-z0-9._:@-]`.
    #[error("customer id contains {0:?}; only letters, digits and . _ : @ - are allowed")]
    InvalidChar(char),
}

impl CustomerId {
    /// Validates a customer id.
    pub fn parse(text: &str) -> Result<CustomerId, CustomerIdError> {
        if text.is_empty() {
            return Err(CustomerIdError::Empty);
        }
        if text.len() > MAX_CUSTOMER_ID_LEN {
            return Err(CustomerIdError::TooLong(text.len()));
        }
        if let Some(bad) = text.chars().find(|&c| !is_allowed(c)) {
            return Err(CustomerIdError::InvalidChar(bad));
        }
        Ok(CustomerId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

impl AsRef<str> for CustomerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerId({})", self.0)
    }
}

impl std::str::FromStr for CustomerId {
    type Err = CustomerIdError;

    fn from_str(text: &str) -> Result<CustomerId, CustomerIdError> {
        CustomerId::parse(text)
    }
}

impl<'de> Deserialize<'de> for CustomerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CustomerId, D::Error> {
        let text = String::deserialize(deserializer)?;
        CustomerId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_ids_are_accepted() {
        for id in [
            "cust-1",
            "user_42",
            "alice@example.com",
            "tenant:7:user.9",
            "A",
        ] {
            assert_eq!(CustomerId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn empty_id_is_rejected() {
        assert_eq!(CustomerId::parse(""), Err(CustomerIdError::Empty));
    }

    #[test]
    fn id_of_128_bytes_is_accepted_and_129_rejected() {
        assert!(CustomerId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            CustomerId::parse(&"a".repeat(129)),
            Err(CustomerIdError::TooLong(129))
        );
    }

    #[test]
    fn braces_and_whitespace_are_rejected_because_they_break_hash_tags() {
        for (id, bad) in [
            ("a{b", '{'),
            ("a}b", '}'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("a\nb", '\n'),
            ("a/b", '/'),
            ("é", 'é'),
        ] {
            assert_eq!(
                CustomerId::parse(id),
                Err(CustomerIdError::InvalidChar(bad))
            );
        }
    }

    #[test]
    fn serde_is_a_plain_string_and_validates_on_the_way_in() {
        let id = CustomerId::parse("cust-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"cust-1\"");
        assert_eq!(
            serde_json::from_str::<CustomerId>("\"cust-1\"").unwrap(),
            id
        );
        assert!(serde_json::from_str::<CustomerId>("\"{cust}\"").is_err());
        assert!(serde_json::from_str::<CustomerId>("\"\"").is_err());
    }

    #[test]
    fn display_and_as_ref_show_the_id() {
        let id = CustomerId::parse("cust-1").unwrap();
        assert_eq!(id.to_string(), "cust-1");
        assert_eq!(id.as_ref(), "cust-1");
    }
}

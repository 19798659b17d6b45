//! Message type indicator: four decimal digits, version / class / function
//! / origin.

use std::fmt;

/// An MTI such as `0200`, kept as its decimal value (200).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mti(u16);

impl Mti {
    pub const AUTHORIZATION: Mti = Mti(100);
    pub const AUTHORIZATION_REPEAT: Mti = Mti(101);
    pub const AUTHORIZATION_RESPONSE: Mti = Mti(110);
    pub const AUTHORIZATION_ADVICE: Mti = Mti(120);
    pub const AUTHORIZATION_ADVICE_REPEAT: Mti = Mti(121);
    pub const AUTHORIZATION_ADVICE_RESPONSE: Mti = Mti(130);
    pub const FINANCIAL: Mti = Mti(200);
    pub const FINANCIAL_REPEAT: Mti = Mti(201);
    pub const FINANCIAL_RESPONSE: Mti = Mti(210);
    pub const FINANCIAL_ADVICE: Mti = Mti(220);
    pub const FINANCIAL_ADVICE_REPEAT: Mti = Mti(221);
    pub const FINANCIAL_ADVICE_RESPONSE: Mti = Mti(230);
    pub const REVERSAL: Mti = Mti(400);
    pub const REVERSAL_REPEAT: Mti = Mti(401);
    pub const REVERSAL_RESPONSE: Mti = Mti(410);
    pub const REVERSAL_ADVICE: Mti = Mti(420);
    pub const REVERSAL_ADVICE_REPEAT: Mti = Mti(421);
    pub const REVERSAL_ADVICE_RESPONSE: Mti = Mti(430);
    pub const RECONCILIATION: Mti = Mti(500);
    pub const RECONCILIATION_RESPONSE: Mti = Mti(510);
    pub const NETWORK: Mti = Mti(800);
    pub const NETWORK_RESPONSE: Mti = Mti(810);

    /// `None` unless `value` has at most four decimal digits.
    pub const fn new(value: u16) -> Option<Mti> {
        if value <= 9999 {
            Some(Mti(value))
        } else {
            None
        }
    }

    /// From four ASCII digits.
    pub fn from_ascii(digits: &[u8]) -> Option<Mti> {
        if digits.len() != 4 {
            return None;
        }
        let mut v = 0u16;
        for &c in digits {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + d as u16;
        }
        Some(Mti(v))
    }

    pub const fn value(self) -> u16 {
        self.0
    }

    /// Four ASCII digits.
    pub fn to_ascii(self) -> [u8; 4] {
        let v = self.0;
        [
            b'0' + (v / 1000) as u8,
            b'0' + (v / 100 % 10) as u8,
            b'0' + (v / 10 % 10) as u8,
            b'0' + (v % 10) as u8,
        ]
    }

    /// 0 for ISO 8583:1987, 1 for 1993, 2 for 2003.
    pub const fn version(self) -> u8 {
        (self.0 / 1000) as u8
    }

    /// 1 authorization, 2 financial, 4 reversal, 5 reconciliation, 8 network...
    pub const fn class(self) -> u8 {
        (self.0 / 100 % 10) as u8
    }

    /// 0 request, 1 request response, 2 advice, 3 advice response...
    pub const fn function(self) -> u8 {
        (self.0 / 10 % 10) as u8
    }

    /// 0 acquirer, 1 acquirer repeat, ...
    pub const fn origin(self) -> u8 {
        (self.0 % 10) as u8
    }

    /// Requests and advices have an even function digit.
    pub const fn is_request(self) -> bool {
        self.function() % 2 == 0
    }

    /// A repeat (`0101`, `0201`, `0401`, `0421`, `0221`, ...).
    pub const fn is_repeat(self) -> bool {
        self.is_request() && self.origin() % 2 == 1
    }

    /// The response MTI: `0100`->`0110`, `0420`->`0430`, `0101`->`0110`.
    /// `None` for an MTI that is already a response.
    pub const fn response(self) -> Option<Mti> {
        if !self.is_request() {
            return None;
        }
        Some(Mti(self.0 - self.0 % 10 + 10))
    }

    /// The first-transmission form of a repeat (`0421` -> `0420`).
    pub const fn original(self) -> Mti {
        if self.is_repeat() {
            Mti(self.0 - 1)
        } else {
            self
        }
    }

    /// The repeat form (`0420` -> `0421`); unchanged if not a request.
    pub const fn repeat(self) -> Mti {
        if self.is_request() && self.origin() == 0 {
            Mti(self.0 + 1)
        } else {
            self
        }
    }

    /// The key under which a request and its response meet: the MTI with
    /// function rounded down to the request and origin cleared (`0100`,
    /// `0101` and `0110` all give `0100`).
    pub const fn match_class(self) -> u16 {
        let f = self.function() - self.function() % 2;
        self.0 - self.0 % 100 + f as u16 * 10
    }
}

impl fmt::Display for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.0)
    }
}

impl fmt::Debug for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mti({:04})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_follow_the_1987_table() {
        for (req, resp) in [
            (100, 110),
            (101, 110),
            (200, 210),
            (201, 210),
            (220, 230),
            (221, 230),
            (400, 410),
            (401, 410),
            (420, 430),
            (421, 430),
            (500, 510),
            (800, 810),
        ] {
            let m = Mti::new(req).unwrap();
            assert_eq!(m.response().map(Mti::value), Some(resp), "{req}");
        }
        assert_eq!(Mti::new(210).unwrap().response(), None);
    }

    #[test]
    fn repeats_and_match_classes() {
        assert!(Mti::new(421).unwrap().is_repeat());
        assert!(!Mti::new(420).unwrap().is_repeat());
        assert!(!Mti::new(411).unwrap().is_repeat());
        assert_eq!(Mti::new(421).unwrap().original().value(), 420);
        assert_eq!(Mti::REVERSAL_ADVICE.repeat().value(), 421);
        assert_eq!(Mti::AUTHORIZATION_RESPONSE.match_class(), 100);
        assert_eq!(Mti::AUTHORIZATION_REPEAT.match_class(), 100);
        assert_eq!(Mti::REVERSAL_ADVICE_RESPONSE.match_class(), 420);
        assert_ne!(
            Mti::REVERSAL.match_class(),
            Mti::REVERSAL_ADVICE.match_class()
        );
    }

    #[test]
    fn ascii_round_trip() {
        assert_eq!(Mti::from_ascii(b"0200"), Some(Mti::FINANCIAL));
        assert_eq!(Mti::FINANCIAL.to_ascii(), *b"0200");
        assert_eq!(Mti::from_ascii(b"02a0"), None);
        assert_eq!(Mti::from_ascii(b"020"), None);
        assert_eq!(Mti::FINANCIAL.to_string(), "0200");
    }
}

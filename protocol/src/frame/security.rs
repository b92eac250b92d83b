//! Administration of users, API tokens and permission rules (the `admin` operation).
//!
//! Frames that carry a password (`CreateUser`, `SetPassword`) are accepted only inside TLS
//! or on a loopback connection: elsewhere the password would cross the network in clear.

use crate::wire::wire_struct;

wire_struct! {
    /// Client → broker: add a user. Answered by `Ok`.
    ///
    /// ```text
    /// +--------+----------+-------+
    /// |  name  | password | admin |
    /// | string |  string  | bool  |
    /// +--------+----------+-------+
    /// ```
    pub struct CreateUser {
        pub name: String,
        pub password: String,
        pub admin: bool,
    }
}

wire_struct! {
    /// Client → broker: give user `name` a new password. Answered by `Ok`.
    pub struct SetPassword {
        pub name: String,
        pub password: String,
    }
}

wire_struct! {
    /// Client → broker: delete a user with its tokens and rules; its open sessions end.
    /// Answered by `Ok`.
    pub struct DeleteUser {
        pub name: String,
    }
}

wire_struct! {
    /// Client → broker: list the users. Empty body; answered by `UserList`.
    pub struct ListUsers {}
}

wire_struct! {
    /// One user in a `UserList`: `name string, admin bool`.
    pub struct UserSummary {
        pub name: String,
        pub admin: bool,
    }
}

wire_struct! {
    /// Broker → client: `users list<UserSummary>`, sorted by name.
    pub struct UserList {
        pub users: Vec<UserSummary>,
    }
}

wire_struct! {
    /// Client → broker: a new API token for `user`, valid for `ttl_ms` (0: until revoked).
    /// Answered by `TokenCreated`.
    pub struct CreateToken {
        pub user: String,
        pub ttl_ms: u64,
    }
}

wire_struct! {
    /// One token as listed: never the token itself, which the broker does not keep.
    ///
    /// ```text
    /// +--------+--------+------------+------------+
    /// |   id   |  user  | created_ms | expires_ms |
    /// | string | string |    u64     |    u64     |
    /// +--------+--------+------------+------------+
    /// ```
    /// Times are milliseconds since the Unix epoch; `expires_ms` 0 means never.
    pub struct TokenSummary {
        pub id: String,
        pub user: String,
        pub created_ms: u64,
        pub expires_ms: u64,
    }
}

wire_struct! {
    /// Broker → client: the new token (`token string`, shown only here) and its summary.
    pub struct TokenCreated {
        pub token: String,
        pub summary: TokenSummary,
    }
}

wire_struct! {
    /// Client → broker: list the tokens. Empty body; answered by `TokenList`.
    pub struct ListTokens {}
}

wire_struct! {
    /// Broker → client: `tokens list<TokenSummary>`, oldest first.
    pub struct TokenList {
        pub tokens: Vec<TokenSummary>,
    }
}

wire_struct! {
    /// Client → broker: revoke token `id`; sessions that logged in with it end.
    /// Answered by `Ok`.
    pub struct RevokeToken {
        pub id: String,
    }
}

wire_struct! {
    /// A permission rule: `id u64, user string, pattern string, operations list<string>`.
    /// Operations are `publish`, `consume`, `describe`, `create`, `delete` and `admin`; a
    /// pattern is a topic name, a prefix ending in `*`, or `*`.
    pub struct AclRule {
        pub id: u64,
        pub user: String,
        pub pattern: String,
        pub operations: Vec<String>,
    }
}

wire_struct! {
    /// Client → broker: grant a rule (its `id` is ignored). Answered by `AclRule` with the
    /// id it was given.
    pub struct AddAcl {
        pub rule: AclRule,
    }
}

wire_struct! {
    /// Client → broker: list the rules. Empty body; answered by `AclList`.
    pub struct ListAcls {}
}

wire_struct! {
    /// Broker → client: `rules list<AclRule>`, oldest first.
    pub struct AclList {
        pub rules: Vec<AclRule>,
    }
}

wire_struct! {
    /// Client → broker: remove rule `id` (`u64`). Answered by `Ok`.
    pub struct RemoveAcl {
        pub id: u64,
    }
}

wire_struct! {
    /// Client → broker: the broker's headline figures. Empty body; answered by `Stats`.
    /// Needs `describe` on every topic with `--auth`.
    pub struct GetStats {}
}

wire_struct! {
    /// Broker → client: `json string`, the same JSON document as `GET /v1/stats` (see the
    /// README): one shape for the CLI and the web page, so they cannot drift apart.
    pub struct Stats {
        pub json: String,
    }
}

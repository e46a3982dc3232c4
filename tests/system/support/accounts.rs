//! The accounts a test needs: the first admin (by the CLI, as documented)
//! and users with tokens.

use super::{ADMIN, ADMIN_PASSWORD, Node, authed, http, run_cli_with_input};

impl Node {
    /// Creates the admin account with the CLI (the documented way to the
    /// first admin). Call once per node.
    pub fn create_admin(&self) {
        let (code, out, err) = self.run_create_admin(&format!("{ADMIN_PASSWORD}\n"));
        assert_eq!(code, 0, "create-admin failed: {out}{err}");
    }

    /// `accounts create-admin` for the admin, `input` on its standard
    /// input: the exit code, stdout and stderr.
    pub fn run_create_admin(&self, input: &str) -> (i32, String, String) {
        run_cli_with_input(
            &self.binary,
            &[
                "accounts",
                "create-admin",
                "--config",
                self.config_path.to_str().unwrap(),
                "--username",
                ADMIN,
            ],
            input,
        )
    }

    /// Logs in over HTTP and returns the whole token response.
    pub async fn login(&self, username: &str, password: &str) -> serde_json::Value {
        let r = http()
            .post(self.url("/api/accounts/login"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(status, 200, "login of {username} failed: {body}");
        body
    }

    /// Creates the admin and returns an access token for it.
    pub async fn admin_token(&self) -> String {
        self.create_admin();
        self.login(ADMIN, ADMIN_PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Has the admin create a user with role `user`; returns (id, token).
    pub async fn user_token(&self, admin_token: &str, username: &str) -> (String, String) {
        let password = user_password(username);
        let r = authed(admin_token)
            .post(self.url("/api/accounts/users"))
            .json(
                &serde_json::json!({"username": username, "password": password, "roles": ["user"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "creating {username}");
        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let token = self.login(username, &password).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        (id, token)
    }
}

/// The password `user_token` gives `username`.
pub fn user_password(username: &str) -> String {
    format!("{username}-password-123")
}

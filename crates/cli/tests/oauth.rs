//! Portcullis as an OAuth 2.0 issuer, driven by a real OAuth client library (the `oauth2`
//! crate): client credentials grant, scope narrowing, JWKS, introspection and revocation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, client, route, server_section, upstream, Gw};
use oauth2::{basic::BasicClient, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_work_and_can_be_revoked() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\nscopes = [\"orders:read\", \"orders:write\"]\n\n[[clients]]\nid = \"elsewhere\"\ndeny_ips = [\"127.0.0.0/8\"]\n\n[auth.oauth2]\ntoken_ttl = \"10m\"\n\n{}{}",
        server_section(""),
        route("read", "[\"GET\"]", "/orders", &up.url(), "auth = [\"oauth2\"]\nscopes = [\"orders:read\"]"),
        route("write", "[\"POST\"]", "/orders", &up.url(), "auth = [\"oauth2\"]\nscopes = [\"orders:write\"]\nidentity_assertion = true"),
    );
    let gw = Gw::start(&cfg);
    let secret = gw.issue_key("billing").await;

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let oauth = BasicClient::new(ClientId::new("billing".into()))
        .set_client_secret(ClientSecret::new(secret.clone()))
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).unwrap());

    // A token narrowed to orders:read reads, and cannot write.
    let tok = oauth
        .exchange_client_credentials()
        .add_scope(Scope::new("orders:read".into()))
        .request_async(&http)
        .await
        .unwrap();
    let access = tok.access_token().secret().clone();
    assert_eq!(
        tok.scopes()
            .map(|s| s.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
        Some(vec!["orders:read".to_string()])
    );
    let res = client()
        .get(gw.url("/orders"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-portcullis-client"], "billing");
    assert_problem(
        client()
            .post(gw.url("/orders"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;

    // Scopes the client may not hold, and a wrong secret, are refused in RFC 6749 form.
    let err = oauth
        .exchange_client_credentials()
        .add_scope(Scope::new("admin:all".into()))
        .request_async(&http)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("invalid_scope"), "{err:?}");
    let wrong = BasicClient::new(ClientId::new("billing".into()))
        .set_client_secret(ClientSecret::new(format!(
            "{}x",
            &secret[..secret.len() - 1]
        )))
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).unwrap());
    let err = wrong
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("invalid_client"), "{err:?}");

    // Client secret by form post works too; the token gets all the client's scopes.
    let by_form = |id: &'static str, secret: String| {
        http.post(gw.url("/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials".to_string()),
                ("client_id", id.to_string()),
                ("client_secret", secret),
            ])
            .send()
    };
    let res = by_form("billing", secret.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let full: serde_json::Value = res.json().await.unwrap();
    assert_eq!(full["scope"], "orders:read orders:write");
    // A client refused on this network gets no token here either.
    let far = gw.issue_key("elsewhere").await;
    let refused = by_form("elsewhere", far).await.unwrap();
    assert_problem(refused, 403, "forbidden").await;
    let res = http
        .post(gw.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "billing"),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );

    // The signing key is published; the token names it.
    let jwks: serde_json::Value = http
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    let header = jsonwebtoken::decode_header(&access).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));

    // Introspection, then revocation: the token stops working on the next request.
    let intro = |t: String| {
        let http = http.clone();
        let url = gw.url("/oauth/introspect");
        let secret = secret.clone();
        async move {
            http.post(url)
                .basic_auth("billing", Some(secret))
                .form(&[("token", t)])
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let i = intro(access.clone()).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], "billing");
    assert_eq!(i["scope"], "orders:read");
    let res = http
        .post(gw.url("/oauth/revoke"))
        .basic_auth("billing", Some(&secret))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(intro(access.clone()).await["active"], false);
    assert_problem(
        client()
            .get(gw.url("/orders"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    // Introspection needs client credentials.
    let res = http
        .post(gw.url("/oauth/introspect"))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Routes with identity_assertion send a signed assertion the upstream can verify with the JWKS.
    let writer = full["access_token"].as_str().unwrap().to_string();
    let res = client()
        .post(gw.url("/orders"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    let assertion = v["headers"]["x-portcullis-assertion"]
        .as_str()
        .unwrap()
        .to_string();
    let x = jwks["keys"][0]["x"].as_str().unwrap();
    let mut val = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    val.set_audience(&["write"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &assertion,
        &jsonwebtoken::DecodingKey::from_ed_components(x).unwrap(),
        &val,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "billing");
    assert_eq!(claims["request_id"], v["headers"]["x-request-id"]);

    // Rotating the signing key with a grace period: both keys are published, tokens signed by
    // the old one keep working, new tokens use the new one.
    gw.cli(&[
        "secret",
        "generate",
        "portcullis.oauth-signing-key",
        "--type",
        "ed25519",
        "--grace",
        "1h",
    ]);
    let mut published = 0;
    for _ in 0..50 {
        let j: serde_json::Value = http
            .get(gw.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        published = j["keys"].as_array().unwrap().len();
        if published == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(published, 2);
    assert_eq!(
        client()
            .post(gw.url("/orders"))
            .bearer_auth(&writer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let newer = oauth
        .exchange_client_credentials()
        .add_scope(Scope::new("orders:read".into()))
        .request_async(&http)
        .await
        .unwrap();
    let new_kid = jsonwebtoken::decode_header(newer.access_token().secret())
        .unwrap()
        .kid
        .unwrap();
    assert_ne!(new_kid, kid);
    assert_eq!(
        client()
            .get(gw.url("/orders"))
            .bearer_auth(newer.access_token().secret())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // No secret reached the log.
    let logs = gw.stdout.all();
    assert!(
        !logs.contains(&secret) && !logs.contains(&access),
        "credential in the log"
    );
}

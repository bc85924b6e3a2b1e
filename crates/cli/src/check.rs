//! `portcullis check`: everything `serve` would verify before starting, without starting.

use crate::{InvalidConfig, UnusableConfig, EXIT_CONFIG};
use portcullis_config::{Config, Severity};
use portcullis_store::Store;
use portcullis_vault::{Catalog, LogEventSink, Vault, VaultError};
use std::{path::Path, process::ExitCode, sync::Arc};

pub(crate) async fn run(path: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let loaded = portcullis_config::load(path).map_err(InvalidConfig)?;
    if let Err(e) = files_load(&loaded.config, &path.display().to_string()).await {
        eprintln!("{e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let file = path.display().to_string();
    let (errors, notes) = check_secrets(&loaded.config).await;
    for (e, site) in &errors {
        // A finding about one reference points at the value that makes it.
        match site.as_ref().and_then(|(c, n)| loaded.secret_site(c, n)) {
            Some(at) => eprintln!("{file}:{}:{}: error: {e}", at.line, at.column),
            None => eprintln!("{file}: error: {e}"),
        }
    }
    // Warnings too when there are errors: whoever fixes the errors sees the whole picture in
    // one round (a key not verified here, say), as for errors in the file itself.
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    for n in &notes {
        eprintln!("{file}: warning: {n}");
    }
    if !errors.is_empty() {
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let warnings = loaded
        .warnings
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count()
        + notes.len();
    println!(
        "{}: ok ({} route{}, {warnings} warning{})",
        path.display(),
        loaded.config.routes.len(),
        if loaded.config.routes.len() == 1 {
            ""
        } else {
            "s"
        },
        if warnings == 1 { "" } else { "s" }
    );
    Ok(if strict && warnings > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads every file the configuration names and only the running gateway reads, without
/// touching its state: the data plane is built against a throwaway store (certificates, keys,
/// CA files, compiled schemas), and the JWT issuers' static keys and CA files are read. `check`
/// runs it, and so does `serve` before it creates a vault or binds a port. `file` names the
/// configuration in the message.
pub(crate) async fn files_load(cfg: &Config, file: &str) -> Result<(), UnusableConfig> {
    let scratch = portcullis_store::open("sqlite::memory:", Path::new("."))
        .await
        .map_err(|e| UnusableConfig(format!("{file}: error: a scratch store: {e}")))?;
    portcullis_proxy::Gateway::new(cfg, scratch, portcullis_proxy::Services::none(cfg))
        .map_err(|e| UnusableConfig(format!("{file}: error: {e}")))?;
    portcullis_identity::JwtVerifier::check_files(&cfg.auth.jwt)
        .map_err(|e| UnusableConfig(format!("{file}: error: auth.jwt: {e}")))?;
    Ok(())
}

/// An error, and the (consumer, secret) reference it is about when it is about one.
type Finding = (String, Option<(String, String)>);

/// Checks every `{secret:...}` reference against the vault, when the vault exists: the secret
/// must exist, be usable, and be bound to the consumer that references it. Returns (errors,
/// each with the (consumer, secret) reference it is about, and warnings). Never creates state:
/// without a store file or key there is nothing to check.
async fn check_secrets(cfg: &Config) -> (Vec<Finding>, Vec<String>) {
    // (consumer, secret, the field of it a route header takes, if any).
    let mut refs: Vec<(String, String, Option<String>)> = Vec::new();
    for r in &cfg.routes {
        for s in r
            .upstream_headers
            .iter()
            .filter_map(|h| h.value.secret.as_ref())
        {
            refs.push((r.consumer(), s.name.clone(), s.field.clone()));
        }
    }
    // Webhook signing secrets, the gateway's own webhook signing secret, and integration
    // credentials are bound to their consumers the same way.
    for w in &cfg.webhooks {
        refs.extend(
            w.secrets
                .iter()
                .map(|s| (w.consumer(), s.name.clone(), None)),
        );
    }
    if let Some(s) = &cfg.webhook_signing {
        refs.push((
            portcullis_proxy::WEBHOOK_SIGNING_CONSUMER.to_string(),
            s.name.clone(),
            None,
        ));
    }
    for i in &cfg.integrations {
        if let Some(c) = &i.credential {
            refs.push((i.consumer(), c.secret.clone(), None));
        }
    }
    let db = cfg.store.url.strip_prefix("sqlite://").map(Path::new);
    if db.is_some_and(|p| !p.exists()) {
        let warn = (!refs.is_empty()).then(|| {
            "the vault has not been created yet, so secret references were not checked".to_string()
        });
        return (Vec::new(), warn.into_iter().collect());
    }
    // A shared database may be out of reach from where the file is checked (a CI runner):
    // not connecting when there is nothing to look up, and a warning when it cannot be.
    let shared = cfg.store.is_shared();
    if shared && refs.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let catalog = if shared {
        // Read-only sessions and no migration: checking a file must not change a production
        // database, nor register this machine's master key in it.
        let store: Arc<dyn Store> =
            match portcullis_store::PgStore::connect_read_only(&cfg.store.url).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    return (
                        Vec::new(),
                        vec![format!(
                            "cannot reach the store, so secret references were not checked: {e}"
                        )],
                    )
                }
            };
        if let Err(e) = store.vault().epoch().await {
            return (
                Vec::new(),
                vec![format!(
                    "the store has no readable vault yet (has a gateway started on this database?), so secret references were not checked (the database said: {e})"
                )],
            );
        }
        let mut warnings = Vec::new();
        match Vault::verify_key(&store, crate::secrets::key_provider(cfg, false).as_ref()).await {
            Ok(()) => {}
            // The key may live only where the gateway runs: say so, and check the metadata.
            Err(e @ VaultError::KeyAbsent(_)) => {
                warnings.push(format!("the master key was not verified here: {e}"))
            }
            Err(e @ VaultError::Store(_)) => {
                return (
                    vec![(format!("reading the vault's keys: {e}"), None)],
                    Vec::new(),
                )
            }
            // A key that is given but malformed, unsafe, wrong or retired would stop the
            // gateway here too; each of these messages names the master key itself.
            Err(e) => return (vec![(e.to_string(), None)], Vec::new()),
        }
        (Catalog::new(store), warnings)
    } else {
        let vault = async {
            let store = portcullis_store::open(&cfg.store.url, &cfg.server.data_dir)
                .await
                .map_err(VaultError::from)?;
            Vault::open(
                store.clone(),
                crate::secrets::key_provider(cfg, false),
                Arc::new(LogEventSink),
            )
            .await?;
            Ok::<_, VaultError>(store)
        };
        match vault.await {
            Ok(store) => (Catalog::new(store), Vec::new()),
            Err(e) => {
                return (
                    vec![(
                        format!("cannot open the vault to check secret references: {e}"),
                        None,
                    )],
                    Vec::new(),
                )
            }
        }
    };
    let (catalog, mut warnings) = catalog;
    let mut errors = Vec::new();
    for (consumer, name, field) in refs {
        let info = match catalog.show(&name).await {
            Ok(info) => info,
            Err(e) => {
                let why = match e {
                    VaultError::NotFound(_) => "which does not exist".to_string(),
                    e => format!("which could not be read: {e}"),
                };
                errors.push((
                    format!("{consumer} references secret {name:?}, {why}"),
                    Some((consumer, name)),
                ));
                continue;
            }
        };
        let problem = if !info.consumers.contains(&consumer) {
            format!(
                "{consumer} references secret {name:?}, which is not bound to it (consumers: {})",
                info.consumers.join(", ")
            )
        } else if info.current_version.is_none() {
            format!("secret {name:?} (used by {consumer}) has no usable version")
        } else {
            if let Some(note) = field.and_then(|f| field_note(&info, &consumer, &name, &f)) {
                warnings.push(note);
            }
            continue;
        };
        errors.push((problem, Some((consumer, name))));
    }
    warnings.extend(
        catalog
            .findings(cfg.vault.expiry_warning)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.message),
    );
    (errors, warnings)
}

/// A field reference (`{secret:NAME#field}`) the secret's type does not guarantee: it answers
/// 503 on every request at run time unless the value happens to be a JSON object with that
/// field. Only the structured types guarantee their fields; any other value may or may not
/// be such an object, which only the decrypted value tells, so this is a warning.
fn field_note(
    info: &portcullis_vault::SecretInfo,
    consumer: &str,
    name: &str,
    field: &str,
) -> Option<String> {
    let kind = portcullis_vault::SecretType::parse(&info.secret_type).ok()?;
    let known = kind.fields();
    let why = if known.is_empty() {
        (kind != portcullis_vault::SecretType::Opaque)
            .then(|| format!("a {} secret has no fields of its own", info.secret_type))?
    } else {
        (!known.contains(&field)).then(|| {
            format!(
                "a {} secret's fields are {}",
                info.secret_type,
                known.join(", ")
            )
        })?
    };
    Some(format!(
        "{consumer} references field {field:?} of secret {name:?}, but {why}: unless its value is a JSON object with that field, every request answers 503"
    ))
}

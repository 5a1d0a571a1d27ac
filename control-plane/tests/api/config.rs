use crate::helpers::repo_file;
use tollgate_control_plane::config::Config;

#[test]
fn the_demo_configuration_is_valid() {
    let config = Config::load(&repo_file("config/demo.toml")).expect("demo.toml loads");
    assert_eq!(config.control_plane.listen.port(), 8081);
    assert_eq!(config.control_plane.metrics_listen.port(), 9102);
}

#[test]
fn a_misspelled_key_fails_start_naming_the_key() {
    let demo = std::fs::read_to_string(repo_file("config/demo.toml")).unwrap();
    let broken = demo.replace("database_url =", "databse_url =");
    let path = std::env::temp_dir().join(format!("tg-cp-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, broken).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    let _ = std::fs::remove_file(&path);
    assert!(err.contains("databse_url"), "{err}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = Config::load(&repo_file("config/demo.toml")).unwrap();
    let printed = format!("{config:?}");
    for secret in [
        "demo-only-hs256-secret",
        "demo-only-service-token",
        "sk_test_tollgate_demo",
        "whsec_tollgate_demo",
    ] {
        assert!(
            !printed.contains(secret),
            "{secret} leaked into Debug output"
        );
    }
}

//! A PostgreSQL server of the test's own: Debian's `postgresql` binaries,
//! `initdb` into a temporary directory, `pg_ctl` on a free loopback port,
//! stopped (immediately) when dropped. Run as the `postgres` user when the
//! tests run as root (PostgreSQL refuses root).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL.
pub struct Postgres {
    /// `postgres://latch@127.0.0.1:PORT/postgres`
    pub url: String,
    /// The port.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    user: Option<&'static str>,
    /// Extra server settings (`-c key=value …`).
    settings: String,
    _dir: tempfile::TempDir,
}

/// Where `initdb` and `pg_ctl` are (PATH first, then Debian's versioned dirs).
fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    on_path
        .chain(debian)
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    /// Start one, or `None` without the binaries (a test then skips, unless
    /// `LATCH_REQUIRE_POSTGRES=1`).
    pub fn start() -> Option<Postgres> {
        Self::start_with(None)
    }

    /// Start one that also speaks TLS with `cert` and `key` (PEM files).
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Postgres> {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var("LATCH_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "LATCH_REQUIRE_POSTGRES=1 but initdb/pg_ctl are missing (apt-get install postgresql)"
            );
            eprintln!("skipping: PostgreSQL binaries are missing (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let user = is_root().then_some("postgres");
        if let Some(u) = user {
            let ok = Command::new("chown")
                .args(["-R", u])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the PostgreSQL directory failed");
        }
        let port = super::free_addr().port();
        let mut settings = String::new();
        if let Some((cert, key)) = tls {
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                std::fs::copy(from, dir.path().join(name)).expect("copy TLS file");
            }
            let key = dir.path().join("server.key");
            let ok = Command::new("chmod")
                .arg("600")
                .arg(&key)
                .status()
                .is_ok_and(|s| s.success())
                && user.is_none_or(|u| {
                    Command::new("chown")
                        .args(["-R", u])
                        .arg(dir.path())
                        .status()
                        .is_ok_and(|s| s.success())
                });
            assert!(ok, "preparing the TLS key failed");
            settings = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                dir.path().join("server.crt").display(),
                key.display()
            );
        }
        let pg = Postgres {
            settings,
            url: format!("postgres://latch@127.0.0.1:{port}/postgres"),
            port,
            bin,
            data,
            user,
            _dir: dir,
        };
        let data = pg.data.display().to_string();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "latch",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.restart();
        Some(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stop the server (fast), e.g. to see how Latch copes without it.
    pub fn stop(&self) {
        let data = self.data.display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Start it again after [`Postgres::stop`].
    pub fn restart(&self) {
        let data = self.data.display().to_string();
        let socket_dir = self
            .data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .display()
            .to_string();
        let opts = format!(
            "-p {} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200{}",
            self.port, self.settings
        );
        let log = format!("{socket_dir}/server.log");
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &opts, "-l", &log, "-w", "-t", "60", "start",
            ],
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A test-only hostile receiver, built from the library and never part of
//! the release binary: a real QUIC server endpoint and Noise responder that,
//! once the sender has authenticated, says whatever its [`Script`] tells it
//! to — frames written raw to the control stream (length-prefixed postcard
//! of `wire::Msg`), bypassing `Msg::check`, or a connection close with a
//! reason of its choosing. Used with `mod hostile;` next to `mod util;`.
#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use p2pfs::{
    crypto::keys::{Keypair, PublicKey},
    net::{
        endpoint,
        handshake::{self, EXPORTER_LABEL},
        wire::{self, FilePlan, Msg, RefuseCode},
    },
};

/// What the hostile receiver does after the handshake.
#[derive(Clone, Debug)]
pub enum Script {
    /// Welcomes the sender under this name.
    Welcome(String),
    /// Refuses the sender (before any welcome) with this message.
    Refused(String),
    /// Welcomes (under a valid name), then rejects every offered file with
    /// this reason.
    Reject(String),
    /// Welcomes, accepts the offer, and fails every file with this message
    /// once the sender says it was sent.
    FileResult(String),
    /// Closes the connection right after the handshake with this
    /// application close code and reason.
    Close(u32, String),
}

/// A hostile receiver listening on 127.0.0.1; stops when dropped.
pub struct HostileReceiver {
    rt: Option<tokio::runtime::Runtime>,
    /// Its UDP port.
    pub port: u16,
    /// The key it proves in the handshake.
    pub key: PublicKey,
}

impl HostileReceiver {
    /// Starts serving `script` to every connection, as `identity`.
    pub fn start(identity: &Keypair, script: Script) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ep = rt
            .block_on(async { endpoint::server("127.0.0.1:0".parse::<SocketAddr>().unwrap()) })
            .unwrap();
        let port = ep.local_addr().unwrap().port();
        let key = identity.public();
        let identity = Arc::new(identity.clone());
        let script = Arc::new(script);
        rt.spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (identity, script) = (identity.clone(), script.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        // A probe stops after message 2: that fails here, fine.
                        let _ = serve(conn, &identity, &script).await;
                    }
                });
            }
        });
        Self {
            rt: Some(rt),
            port,
            key,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HostileReceiver {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Writes `msg` as a control frame without any of the checks a decoder
/// applies.
pub async fn write_raw(send: &mut quinn::SendStream, msg: &Msg) -> std::io::Result<()> {
    let body = postcard::to_allocvec(msg).map_err(std::io::Error::other)?;
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    Ok(())
}

async fn serve(conn: quinn::Connection, identity: &Keypair, script: &Script) -> Option<()> {
    let (mut send, mut recv) = conn.accept_bi().await.ok()?;
    let mut prologue = [0u8; 32];
    conn.export_keying_material(&mut prologue, EXPORTER_LABEL, b"")
        .ok()?;
    handshake::respond(&mut recv, &mut send, identity, &prologue)
        .await
        .ok()?;
    // The sender speaks first (protocol 4): its Hello.
    let Ok(Some(Msg::Hello { .. })) = wire::read_msg(&mut recv).await else {
        return None;
    };
    // As a real receiver does once it accepts the sender.
    p2pfs::net::endpoint::authorise(&conn, true);
    let welcome = Msg::Welcome {
        version: "0.1.0".into(),
        name: "evil".into(),
    };
    match script {
        Script::Welcome(name) => {
            let m = Msg::Welcome {
                version: "0.1.0".into(),
                name: name.clone(),
            };
            write_raw(&mut send, &m).await.ok()?;
        }
        Script::Refused(message) => {
            let m = Msg::Refused {
                code: RefuseCode::Declined,
                message: message.clone(),
            };
            write_raw(&mut send, &m).await.ok()?;
            let _ = send.finish();
        }
        Script::Reject(reason) => {
            write_raw(&mut send, &welcome).await.ok()?;
            let Ok(Some(Msg::Offer { files, .. })) = wire::read_msg(&mut recv).await else {
                return None;
            };
            let plan = Msg::Plan {
                files: files
                    .iter()
                    .map(|_| FilePlan::Reject {
                        reason: reason.clone(),
                    })
                    .collect(),
            };
            write_raw(&mut send, &plan).await.ok()?;
        }
        Script::FileResult(message) => {
            write_raw(&mut send, &welcome).await.ok()?;
            let Ok(Some(Msg::Offer { files, .. })) = wire::read_msg(&mut recv).await else {
                return None;
            };
            let plan = Msg::Plan {
                files: (0..files.len())
                    .map(|i| FilePlan::New {
                        file_id: [i as u8 + 1; 16],
                    })
                    .collect(),
            };
            write_raw(&mut send, &plan).await.ok()?;
            while let Ok(Some(m)) = wire::read_msg(&mut recv).await {
                if let Msg::FileEnd { file, .. } = m {
                    let r = Msg::FileResult {
                        file,
                        ok: false,
                        code: wire::result_code::STORE,
                        message: message.clone(),
                    };
                    write_raw(&mut send, &r).await.ok()?;
                }
            }
        }
        Script::Close(code, reason) => {
            conn.close(quinn::VarInt::from_u32(*code), reason.as_bytes());
        }
    }
    // Let the sender read it all before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(20), conn.closed()).await;
    Some(())
}

//! `flynn-host tls show|pin|ca`: the API's TLS as a client needs it (the pin to
//! give `--tls-pin` or `flynn cluster add -p`, the CA file for `--tls-ca`).

use anyhow::Result;
use clap::Subcommand;
use hyper::Method;

use crate::client::Client;
use crate::model::TlsInfo;

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// The CA's pin, the host certificate's names and expiry.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The CA's pin alone (base64 SHA-256 of its DER), for --tls-pin.
    Pin,
    /// The CA certificate (PEM), for --tls-ca FILE.
    Ca,
}

pub async fn tls(client: &Client, cmd: TlsCommand) -> Result<i32> {
    let info: TlsInfo = client
        .call(Method::GET, "/cluster/tls/ca", None::<&()>)
        .await?;
    match cmd {
        TlsCommand::Show { json: true } => println!("{}", serde_json::to_string_pretty(&info)?),
        TlsCommand::Show { json: false } => {
            println!("pin:       {}", info.pin);
            println!("expires:   {}", info.not_after.to_rfc3339());
            println!("names:     {}", info.names.join(", "));
            println!(
                "CA:        {}",
                if info.cluster {
                    "the cluster's (installed by the bootstrap)"
                } else {
                    "this host's own (made at its first start)"
                }
            );
        }
        TlsCommand::Pin => println!("{}", info.pin),
        TlsCommand::Ca => print!("{}", info.ca),
    }
    Ok(0)
}

//! SPDY/3.1 as kubectl port-forward and exec send it: arbitrary bytes as a
//! whole connection (frames, header blocks) and as a lone header block.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = mast_agent::spdy::decode_header_block(data);
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (out, mut events) = mast_agent::spdy::serve(server);
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            // Keep reading what the server answers until it closes.
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut client, &mut sink).await;
        });
        while let Some(_ev) = events.recv().await {}
        drop(out);
        let _ = writer.await;
    });
});

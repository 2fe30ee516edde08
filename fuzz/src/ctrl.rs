//! mm-mx-ctrl (src/ctrl/): the request built from command-line words, the
//! dispatch of a request line, and every client-side format applied to a
//! reply from the multiplexor (text, bars, tables, JSON, `top`).

use mailmunge::cformat::number::{scan, Conv};
use mailmunge::ctrl::top::{self, Snapshot};
use mailmunge::ctrl::{build_request, Command};
use mailmunge::wire::percent::decode;

use crate::Cursor;

/// Every kind of command, so each format sees every reply.
const LINES: [&[u8]; 16] = [
    b"status\n",
    b"barstatus\n",
    b"rawstatus\n",
    b"load\n",
    b"load-relayok\n",
    b"hload-recipok\n",
    b"rawload-senderok\n",
    b"load1 60\n",
    b"rawload1 60\n",
    b"jsonstatus\n",
    b"jsonload-senderok\n",
    b"jsonhload\n",
    b"jsonload1 30\n",
    b"jsonworkers\n",
    b"jsonbusyworkers\n",
    b"workerinfo 0\n",
];

pub fn run(data: &[u8]) {
    let mut c = Cursor(data);
    let sel = c.byte();
    let words: Vec<Vec<u8>> = c.until(b'\n').split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    let reply = c.rest();

    // Words become one line of percent-encoded words.
    let req = build_request(&words);
    assert_eq!(req.last(), Some(&b'\n'));
    let body = &req[..req.len() - 1];
    assert!(!body.contains(&b'\n'));
    let back: Vec<Vec<u8>> = body.split(|&b| b == b' ').map(decode).collect();
    assert_eq!(back, words);

    for line in [&req[..], LINES[usize::from(sel) % LINES.len()]] {
        let cmd = Command::parse(line);
        assert_eq!(cmd.request().last(), Some(&b'\n'), "{cmd:?}");
        let json = matches!(
            cmd,
            Command::JsonStatus
                | Command::JsonLoad(_)
                | Command::JsonHLoad(_)
                | Command::JsonLoad1(_)
                | Command::JsonWorkers(_)
        );
        for bracket in [false, true] {
            let r = cmd.render(reply, bracket);
            if r.ok && !bracket && json {
                let v: serde_json::Value =
                    serde_json::from_slice(&r.out).expect("JSON output parses");
                assert!(v.is_object());
            }
        }
    }

    let _ = scan(reply, &[Conv::Int, Conv::Float, Conv::Int, Conv::Float]);
    let split = usize::from(sel).min(reply.len());
    let (status, load) = reply.split_at(split);
    let row = Snapshot::from_replies(status, load);
    let _ = top::render(&[("fuzz".to_string(), row)], 2);
}

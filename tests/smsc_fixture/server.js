// An independent SMSC for idtronic-tel's integration tests and benchmark: the npm `smpp` 0.5.1 server,
// behaving as recorded in docs/protocols/SMPP.md (ids of 8 upper-case hex digits, receipts with the
// receipted_message_id and message_state TLVs, data_coding 1, generic_nack for unknown commands).
//
// Usage: node server.js [--port 0] [--system-id test] [--password secret] [--receipt-delay MS]
//        [--receipt-status DELIVRD] [--submit-delay MS] [--throttle-every N] [--close-after N]
//        [--close-connections K] [--accept-on-receipt 1] [--storm-at N] [--storm-length M]
//        [--storm-every P] [--storm-count C] [--first-id N] [--quiet 1] [--record PATH]
//        [--receipts-on-submitter 1]
// Prints JSON lines on stdout: {"event":"listening","port":P} first, then one line per bind, per
// accepted submit_sm (without the message text: only its length, coding, UDH and destination, and `time`,
// the acceptance in ms since the epoch) and per closed session. A receipt answered with an error status is
// delivered again 200 ms later; one left unanswered by a closed session, after the next bind.
//
// For the end-to-end bench (bench/e2e_bench.py):
// --record PATH             append one JSON line per accepted submit_sm to PATH, with the message text (the
//                           bench's merchants confirm with the codes the SMSC received):
//                           {"e":"s","id":ID,"t":epoch ms (fractional),"d":destination,"x":text}, and one per
//                           receipt the client acknowledged with status 0: {"e":"r","id":ID}.
// --receipts-on-submitter 1 deliver a receipt on the session that submitted the message while it is open
//                           (as operators do), not on the first bound receiver.
//
// Fault controls:
// --submit-delay MS         answer each submit_sm after MS milliseconds.
// --accept-on-receipt 1     a submit_sm is accepted (id drawn, recorded, receipt sent later) as soon as it
//                           arrives, and still delivered if its connection dies before the delayed answer:
//                           what a real SMSC does, and what turns an unanswered submit into a duplicate
//                           when the client sends it again. Without it, an unanswered submit is not
//                           accepted.
// --close-after N, --close-connections K: the first K sessions are dropped (socket destroyed, no unbind)
//                           at their (N+1)th submit_sm, which is not accepted.
// --throttle-every N        every Nth submit_sm is answered ESME_RTHROTTLED.
// --storm-at N --storm-length M [--storm-every P] [--storm-count C]: submits number N to N+M-1 (counted
//                           from 1 over all sessions), and again every P submits (C storms in all, or no
//                           end), are answered ESME_RTHROTTLED and ESME_RMSGQFUL in turn;
//                           {"event":"throttled"} lines record them.
'use strict';
const smpp = require('smpp');

const options = {
  port: 0,
  systemId: 'test',
  password: 'secret',
  receiptDelay: 0,
  receiptStatus: 'DELIVRD',
  submitDelay: 0,
  throttleEvery: 0,
  closeAfter: 0,
  closeConnections: 1,
  acceptOnReceipt: 0,
  stormAt: 0,
  stormLength: 0,
  stormEvery: 0,
  stormCount: 0,
  firstId: 9001,
  quiet: 0,
  record: '',
  receiptsOnSubmitter: 0,
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  if (!(key in options)) {
    process.stderr.write(`unknown option ${argv[i]}\n`);
    process.exit(2);
  }
  options[key] = typeof options[key] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}

const MESSAGE_STATE = { DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8, ENROUTE: 1 };
const ESME_RINVBNDSTS = 0x04;
const ESME_RINVPASWD = 0x0e;
const ESME_RTHROTTLED = 0x58;
const ESME_RMSGQFUL = 0x14;

function stormStatus(n) {
  // The status answering submit number n (from 1) inside a storm, or 0 outside.
  if (!options.stormLength || n < options.stormAt) return 0;
  const offset = options.stormEvery ? (n - options.stormAt) % options.stormEvery : n - options.stormAt;
  const storm = options.stormEvery ? Math.floor((n - options.stormAt) / options.stormEvery) : 0;
  if (offset >= options.stormLength || (options.stormCount && storm >= options.stormCount)) return 0;
  return offset % 2 ? ESME_RMSGQFUL : ESME_RTHROTTLED;
}

let nextId = options.firstId;
let submitsSeen = 0; // across sessions, for --throttle-every
let connectionsClosed = 0;
const receivers = []; // bound sessions able to take deliver_sm (transceiver / receiver)
const pendingReceipts = [];

const { performance } = require('perf_hooks');
const record = options.record ? require('fs').createWriteStream(options.record, { flags: 'a' }) : null;

function emit(event) {
  if (!options.quiet || event.event === 'listening') {
    process.stdout.write(JSON.stringify(event) + '\n');
  }
}

function pad(n) {
  return String(n).padStart(2, '0');
}

function smppDate(d) {
  return pad(d.getUTCFullYear() % 100) + pad(d.getUTCMonth() + 1) + pad(d.getUTCDate()) +
    pad(d.getUTCHours()) + pad(d.getUTCMinutes());
}

function sendReceipt(receipt, submitter) {
  const session = submitter && !submitter.closed && receivers.includes(submitter)
    ? submitter : receivers.find((s) => !s.closed);
  if (!session) {
    pendingReceipts.push(receipt);
    return;
  }
  // As an SMSC does: a receipt answered with an error status (the client's database was down) is
  // delivered again a moment later; one never answered goes again after a reconnection.
  session.inflightReceipts.add(receipt);
  session.deliver_sm(receipt, (resp) => {
    session.inflightReceipts.delete(receipt);
    if (resp.command_status !== 0) {
      emit({ event: 'receipt_refused', status: resp.command_status });
      setTimeout(() => sendReceipt(receipt), 200);
    } else if (record) {
      record.write(JSON.stringify({ e: 'r', id: receipt.receipted_message_id }) + '\n');
    }
  });
}

function flushReceipts() {
  while (pendingReceipts.length && receivers.some((s) => !s.closed)) {
    sendReceipt(pendingReceipts.shift());
  }
}

const server = smpp.createServer(function (session) {
  session.socket.setNoDelay(true);
  session.bound = false;
  session.closed = false;
  session.submits = 0;
  session.inflightReceipts = new Set();
  session.on('close', () => {
    session.closed = true;
    const i = receivers.indexOf(session);
    if (i >= 0) receivers.splice(i, 1);
    emit({ event: 'session_closed', submits: session.submits });
    for (const receipt of session.inflightReceipts) pendingReceipts.push(receipt);
    session.inflightReceipts.clear();
    flushReceipts();
  });
  session.on('error', () => {
    // Malformed input or a reset: node-smpp closes the socket; nothing else to do.
  });

  function onBind(pdu) {
    const ok = pdu.system_id === options.systemId && pdu.password === options.password;
    emit({ event: 'bind', command: pdu.command, ok });
    if (!ok) {
      session.send(pdu.response({ command_status: ESME_RINVPASWD }));
      return;
    }
    session.bound = true;
    session.send(pdu.response({ system_id: 'NODESMSC' }));
    if (pdu.command !== 'bind_transmitter') {
      receivers.push(session);
      flushReceipts();
    }
  }
  session.on('bind_transceiver', onBind);
  session.on('bind_transmitter', onBind);
  session.on('bind_receiver', onBind);

  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on('deliver_sm_resp', () => {});
  session.on('unknown', (pdu) => session.send(pdu.response()));

  session.on('submit_sm', (pdu) => {
    if (!session.bound) {
      session.send(pdu.response({ command_status: ESME_RINVBNDSTS }));
      return;
    }
    if (session.dropped) return; // parsed from the same read as the submit that dropped the session
    session.submits += 1;
    if (options.closeAfter && connectionsClosed < options.closeConnections &&
        session.submits > options.closeAfter) {
      // Drop the connection with this submit_sm (and whatever follows it) unanswered.
      connectionsClosed += 1;
      session.dropped = true;
      emit({ event: 'close', after: options.closeAfter });
      session.destroy();
      return;
    }
    submitsSeen += 1;
    const storm = stormStatus(submitsSeen);
    if (storm || (options.throttleEvery && submitsSeen % options.throttleEvery === 0)) {
      emit({ event: 'throttled', destination: pdu.destination_addr, status: storm || ESME_RTHROTTLED });
      session.send(pdu.response({ command_status: storm || ESME_RTHROTTLED }));
      return;
    }
    const submitted = new Date();
    const accept = () => {
      const id = nextId.toString(16).toUpperCase().padStart(8, '0');
      nextId += 1;
      const raw = Buffer.isBuffer(pdu.short_message) ? pdu.short_message : null;
      const message = pdu.short_message && pdu.short_message.message;
      const udh = pdu.short_message && pdu.short_message.udh && pdu.short_message.udh[0];
      emit({
        event: 'submit',
        id,
        time: Date.now(),
        destination: pdu.destination_addr,
        dest_ton: pdu.dest_addr_ton,
        dest_npi: pdu.dest_addr_npi,
        source: pdu.source_addr,
        source_ton: pdu.source_addr_ton,
        data_coding: pdu.data_coding,
        esm_class: pdu.esm_class,
        registered_delivery: pdu.registered_delivery,
        validity_period: pdu.validity_period instanceof Date ? pdu.validity_period.getTime() : pdu.validity_period,
        udh: udh ? Buffer.from(udh).toString('hex') : null,
        length: raw ? raw.length : (typeof message === 'string' ? message.length : 0),
      });
      if (record) {
        const text = typeof message === 'string' ? message : Buffer.from(raw || message || '').toString('latin1');
        const t = performance.timeOrigin + performance.now();
        record.write(JSON.stringify({ e: 's', id, t, d: pdu.destination_addr, x: text }) + '\n');
      }
      return id;
    };
    const deliver = (id) => {
      if (!(pdu.registered_delivery & 0x01)) return;
      const stat = options.receiptStatus;
      const text = `id:${id} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} ` +
        `submit date:${smppDate(submitted)} done date:${smppDate(new Date())} stat:${stat} err:000 text:`;
      const receipt = {
        source_addr_ton: pdu.dest_addr_ton,
        source_addr_npi: pdu.dest_addr_npi,
        source_addr: pdu.destination_addr,
        dest_addr_ton: pdu.source_addr_ton,
        dest_addr_npi: pdu.source_addr_npi,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        data_coding: 1,
        short_message: Buffer.from(text, 'ascii'),
        receipted_message_id: id,
        message_state: MESSAGE_STATE[stat] || 7,
      };
      const submitter = options.receiptsOnSubmitter ? session : null;
      if (options.receiptDelay) {
        setTimeout(() => sendReceipt(receipt, submitter), options.receiptDelay);
      } else {
        sendReceipt(receipt, submitter);
      }
    };
    const later = (fn) => (options.submitDelay ? setTimeout(fn, options.submitDelay) : fn());
    if (options.acceptOnReceipt) {
      const id = accept();
      later(() => {
        if (!session.closed) session.send(pdu.response({ message_id: id }));
        deliver(id);
      });
      return;
    }
    later(() => {
      if (session.closed) return; // never answered: not accepted
      const id = accept();
      session.send(pdu.response({ message_id: id }));
      deliver(id);
    });
  });
});

server.listen(options.port, '127.0.0.1', () => {
  emit({ event: 'listening', port: server.address().port });
});
process.on('SIGTERM', () => (record ? record.end(() => process.exit(0)) : process.exit(0)));

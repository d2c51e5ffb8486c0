// The playground's page in the browser. The server passes its values once, as the JSON of
// #starchat-config; this file runs in the page's head, before the app's components load their kept
// values. Gradio calls `start` once the app has loaded, and each event's js calls one function of
// `window.starchat` (playground/ui/browser.py names them).
window.starchat = (() => {
  const config = JSON.parse(document.getElementById('starchat-config').textContent);
  const $ = (selector) => document.querySelector(selector);

  // Every Enter or Send press notes the box as it is, just before its event's `take` runs and takes the
  // note: keys typed before Gradio reads the box for the event belong to the next message.
  let pressedSend = null;
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.target.closest?.('#message')) {
      pressedSend = event.target.value;
    }
  }, true);
  document.addEventListener('pointerdown', (event) => {
    if (event.target.closest?.('#send')) pressedSend = $('#message textarea')?.value ?? '';
  }, true);

  // MD5, which the browser's crypto lacks and Gradio's BrowserState uses to make its key (`unseal`).
  const md5 = (bytes) => {
    const K = new Int32Array(64).map((_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32));
    const S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    const padded = new Uint8Array(((bytes.length + 8) >> 6) * 64 + 64);
    padded.set(bytes);
    padded[bytes.length] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, (bytes.length * 8) >>> 0, true);
    view.setUint32(padded.length - 4, Math.floor(bytes.length / 2 ** 29), true);
    const state = [0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476];
    for (let offset = 0; offset < padded.length; offset += 64) {
      let [a, b, c, d] = state;
      for (let i = 0; i < 64; i++) {
        const round = i >> 4;
        const f = [(b & c) | (~b & d), (d & b) | (~d & c), b ^ c ^ d, c ^ (b | ~d)][round];
        const g = [i, (5 * i + 1) % 16, (3 * i + 5) % 16, (7 * i) % 16][round];
        const sum = (a + f + K[i] + view.getInt32(offset + 4 * g, true)) | 0, shift = S[round * 4 + (i % 4)];
        [a, d, c] = [d, c, b];
        b = (b + ((sum << shift) | (sum >>> (32 - shift)))) | 0;
      }
      [a, b, c, d].forEach((word, i) => { state[i] = (state[i] + word) | 0; });
    }
    const out = new DataView(new ArrayBuffer(16));
    state.forEach((word, i) => out.setInt32(4 * i, word, true));
    return new Uint8Array(out.buffer);
  };
  const joined = (...parts) => {
    const all = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
    parts.reduce((at, part) => (all.set(part, at), at + part.length), 0);
    return all;
  };
  // A value as gr.BrowserState keeps it (CryptoJS AES with the app's secret, the OpenSSL way: an MD5 chain
  // over the passphrase and a salt gives the key and iv), read back. undefined where it cannot be read (the
  // browser's crypto needs https or localhost), null where nothing is kept.
  const unseal = async (sealed) => {
    if (!sealed) return null;
    try {
      const bytes = Uint8Array.from(atob(sealed.split(':')[1]), (c) => c.charCodeAt(0));
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(config.storageSecret)));
      const passphrase = new TextEncoder().encode([...digest].map((b) => b.toString(16).padStart(2, '0')).join(''));
      const salt = bytes.slice(8, 16);
      let derived = new Uint8Array(0), block = new Uint8Array(0);
      while (derived.length < 48) derived = joined(derived, block = md5(joined(block, passphrase, salt)));
      const key = await crypto.subtle.importKey('raw', derived.slice(0, 32), 'AES-CBC', false, ['decrypt']);
      const plain = await crypto.subtle.decrypt({name: 'AES-CBC', iv: derived.slice(32, 48)}, key, bytes.slice(16));
      return JSON.parse(new TextDecoder().decode(plain));
    } catch {
      return undefined;
    }
  };
  // The kept list as it is now, whichever tab wrote it last; `value`, this tab's, where it cannot be read.
  const freshList = async (value) => {
    const kept = await unseal(localStorage.getItem(config.storageKeys[1]));
    return kept === undefined ? value : kept;
  };

  // Tabs share what is kept. When another tab writes the list, this one draws it anew (#relist). When
  // another writes its open conversation, this one puts that conversation in the list (#take-in), so that
  // the next write of its own open one loses neither. Only when both have the same conversation open does
  // this tab stop keeping (the other's writes stay whole) and say so.
  let elsewhere = false, theirs = '';
  const takeIn = async (value, sent, ...rest) => {
    const conversation = theirs;
    theirs = '';
    return oneAtATime(async () => [stored(await freshList(value)), conversation, ...rest.slice(0, 3)]);
  };
  window.addEventListener('storage', async (event) => {
    if (elsewhere || event.storageArea !== localStorage) return;
    if (event.key === config.storageKeys[1]) $('#relist')?.click();
    if (event.key !== config.storageKeys[0]) return;
    const other = await unseal(event.newValue), mine = $('#conversations input:checked')?.value;
    if (!other?.id || !mine) return;
    if (other.id !== mine) {
      theirs = JSON.stringify(other);
      $('#take-in')?.click();
      return;
    }
    elsewhere = true;
    document.body.prepend(Object.assign(document.createElement('div'),
      {id: 'other-tab', role: 'alert', textContent: config.otherTab}));
  });
  // A tab that opens writes back the values it has just read (Gradio encrypts them anew): no change, but
  // other tabs would see a write. Until its first keystroke or click, a tab writes none of them.
  let used = false;
  for (const type of ['pointerdown', 'keydown']) {
    window.addEventListener(type, (event) => { used ||= event.isTrusted; }, true);
  }
  const setItem = Storage.prototype.setItem;
  Storage.prototype.setItem = function (key, value) {
    const ours = this === window.localStorage && String(key).startsWith(config.storagePrefix);
    if (ours && config.storageKeys.includes(key)) written.splice(0).forEach((resolve) => resolve());
    if (ours && (elsewhere || !used)) return;
    return setItem.call(this, key, value);
  };

  // The events that write what is kept (the list's, and keeping the open conversation) run one at a time:
  // each reads the kept list when the one before has written its answer (or after 2 s, for an answer that
  // writes nothing). Two at once would each write the list as it was, and the last would undo the first.
  const written = [];
  let keeping = Promise.resolve();
  const oneAtATime = async (read) => {
    const before = keeping;
    let done;
    keeping = new Promise((resolve) => { done = resolve; });
    await before;
    try {
      return await read();
    } finally {
      new Promise((resolve) => { written.push(resolve); setTimeout(resolve, 2000); }).then(done);
    }
  };
  // The keeping after each change to the open conversation: its values as Gradio gives them, in turn.
  const inTurn = (...values) => oneAtATime(() => values.slice(0, 6));

  // A stored value goes to the server as its JSON text: flat however deeply a hand-edited value nests, and
  // measured as sent; one too large for the request limit goes as '' (unreadable) instead of a 413.
  const stored = (value) => {
    if (value === null || value === undefined) return null;
    try {
      const text = JSON.stringify(value);
      return new Blob([JSON.stringify(text)]).size <= config.storeBytes ? text : '';
    } catch {
      return '';
    }
  };

  // A finished reply's event ends a moment after its last update, and Gradio then sends that update again:
  // an event that replaces the conversation in that moment (New conversation, reopen, load, delete) would
  // be drawn over by it, so it waits (a moment, but seconds on a loaded machine: 10 s at most). A reply's
  // events all have the message box among their outputs, which Gradio marks while they run; while a reply
  // streams nothing waits: the switch ends it (Turn.leave).
  const settled = async () => {
    const ending = () => $('#message .generating') && !$('#stop')?.checkVisibility();
    for (let i = 0; i < 500 && ending(); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  };

  // An event whose first input is a BrowserState. Gradio calls its js with the inputs' values and then the
  // outputs'; with one input it takes the value itself (at the page's load), with more a list of the
  // inputs, once a finished reply's event has ended.
  const sendStored = async (inputs, value, ...rest) => {
    if (inputs === 1) return stored(value);
    await settled();
    return oneAtATime(() => readStored(inputs, value, ...rest));
  };
  // A switch (New conversation, another from the list) sends last whether this page still shows a reply
  // streaming: the server's busy mark is down as soon as the reply's last update leaves it, while that is
  // still on its way here. If the reply had ended there, the server changes nothing (Replies.behind), and
  // the page asks again once that update is drawn (`askAgain`). A reply's event that has not shown Stop yet
  // is not one: its message was taken or is on its way, and the server ends it.
  let switches = 0;
  const switchStored = async (inputs, ...values) => {
    const asked = ++switches, sent = await sendStored(inputs, ...values);
    const streaming = Boolean($('#stop')?.checkVisibility());
    if (streaming) askAgain(asked, inputs === 9 ? values[1] : null, raw()[0]?.content);
    return [...sent.slice(0, inputs - 1), streaming];
  };
  const askAgain = async (asked, chosen, first) => {
    const drawing = () => $('#stop')?.checkVisibility() || $('#message .generating');
    for (let i = 0; i < 500 && drawing(); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    if (asked !== switches || !first || first !== raw()[0]?.content) return;  // the switch was shown
    const again = chosen ? [...document.querySelectorAll('#conversations input')].find((input) => input.value === chosen)
      : $('#new-conversation');
    // An item still checked from the first click fires nothing: the server's answer unchecks it.
    for (let i = 0; i < 500 && again?.checked; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    again?.click();
  };
  // The same for an event that only reads the list (it writes nothing, so it need not wait its turn).
  const readStored = async (inputs, value, ...rest) => [stored(await freshList(value)), ...rest.slice(0, inputs - 1)];

  // The kept conversations' list: grouped Today / Earlier (when each last changed, in this browser's time
  // zone), each item with its own Rename and Delete. They reach the server through the hidden #list-action
  // button, whose event takes what `listAction` gives it with its other seven inputs.
  let action = '';
  const listAction = async (value, asked, ...rest) => {
    await settled();
    const sent = action;
    action = '';
    return oneAtATime(async () => [stored(await freshList(value)), sent, ...rest.slice(0, 7)]);
  };
  const act = (message) => {
    action = JSON.stringify(message);
    $('#list-action')?.click();
  };
  // Rename in place: Enter or leaving the box saves, Escape keeps the old title.
  const renameItem = (label, id) => {
    const title = label.querySelector('span');
    const box = Object.assign(document.createElement('input'),
      {value: title.textContent, maxLength: config.maxTitle, className: 'rename-box'});
    box.setAttribute('aria-label', 'New title');
    title.hidden = true;
    label.append(box);
    box.focus();
    box.select();
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      box.remove();
      title.hidden = false;
      label.querySelector('.rename')?.focus();  // a keyboard goes on from where it was
      if (save && box.value !== title.textContent) act({rename: id, title: box.value});
    };
    box.addEventListener('keydown', (event) => {
      event.stopPropagation();
      if (event.key !== 'Enter' && event.key !== 'Escape') return;
      event.preventDefault();
      finish(event.key === 'Enter');
    });
    box.addEventListener('blur', () => finish(true));
    box.addEventListener('click', (event) => event.stopPropagation());
  };
  const conversationList = () => {
    const draw = () => {
      const times = hiddenJson('#conversation-dates'), today = new Date().toDateString();
      const group = (seconds) => (seconds && new Date(seconds * 1000).toDateString() === today ? 'Today' : 'Earlier');
      let last = null;
      for (const label of document.querySelectorAll('#conversations label')) {
        const name = group(times[label.querySelector('input')?.value]);
        const before = label.previousElementSibling;
        const header = before?.classList.contains('list-group') ? before : null;
        if (name === last) header?.remove();
        else if (!header) label.before(Object.assign(document.createElement('div'), {className: 'list-group', textContent: name}));
        else if (header.textContent !== name) header.textContent = name;
        last = name;
        if (label.querySelector('.item-actions')) continue;
        const actions = Object.assign(document.createElement('span'), {className: 'item-actions'});
        for (const [kind, title] of [['rename', 'Rename'], ['delete', 'Delete']]) {
          const button = Object.assign(document.createElement('button'), {type: 'button', className: kind, title});
          button.setAttribute('aria-label', title);
          actions.append(button);
        }
        label.append(actions);
      }
      for (const header of document.querySelectorAll('#conversations .list-group')) {
        if (header.nextElementSibling?.tagName !== 'LABEL') header.remove();
      }
    };
    document.addEventListener('click', (event) => {
      const button = event.target.closest?.('#conversations .item-actions button');
      if (!button) return;
      event.preventDefault();
      event.stopPropagation();
      const label = button.closest('label'), id = label.querySelector('input')?.value;
      // The open conversation, while a reply streams into it, is not asked about: the server says to stop
      // the reply first.
      const streaming = label.querySelector('input')?.checked && $('#stop')?.checkVisibility();
      if (button.classList.contains('rename')) renameItem(label, id);
      else if (streaming || window.confirm(config.deleteQuestion)) act({delete: id});
    }, true);
    // On a phone the list covers the chat: choosing from it closes it, to show what was chosen.
    let closing = 0;
    document.addEventListener('click', (event) => {
      if (innerWidth > 768 || !event.target.closest?.('#conversations label, #new-conversation')) return;
      if (event.target.closest('.item-actions, .rename-box')) return;
      closing ||= setTimeout(() => {
        closing = 0;
        $('#history.open > .toggle-button')?.click();
      }, 0);
    });
    watch('#conversations', draw);
  };

  // The JSON object a hidden box of the server's holds ({} until it holds one).
  const hiddenJson = (selector) => {
    try {
      return JSON.parse($(`${selector} textarea`)?.value || '{}');
    } catch {
      return {};
    }
  };

  // Draws again whenever Gradio redraws `selector`, and each quarter second for what changes without a DOM
  // event (a hidden box's value).
  const watch = (selector, draw) => {
    new MutationObserver(draw).observe($(selector), {subtree: true, childList: true});
    setInterval(draw, 250);
    draw();
  };

  // The box is emptied the moment a message is sent, so that what is typed next stays; while a reply
  // streams (Send is then hidden) nothing is taken. The message is the box as it was when Enter or Send
  // was pressed.
  const take = (message, busy) => {
    const box = $('#message textarea'), pressed = pressedSend;
    pressedSend = null;
    const sent = pressed?.trim() && message.startsWith(pressed) ? pressed : message;
    if ($('#send')?.offsetParent && sent.trim() && box) {
      box.value = box.value.startsWith(sent) ? box.value.slice(sent.length) : '';
      box.dispatchEvent(new Event('input', {bubbles: true}));
    }
    return [sent, busy];
  };

  // Load: the browser opens the file and sends what it holds, as JSON, so that no file of it is ever
  // written on the server. A file over config.loadBytes is not read: its size goes instead.
  const openFile = () => new Promise((resolve) => {
    const input = Object.assign(document.createElement('input'), {type: 'file', accept: '.json,application/json'});
    const send = (message) => resolve(JSON.stringify(message));
    input.onchange = async () => {
      const file = input.files[0];
      if (!file) return resolve('');
      closeEdit();
      if (!file.size) return send({error: 'empty'});
      send(file.size > config.loadBytes ? {error: 'too_large', bytes: file.size} : {text: await file.text()});
    };
    input.oncancel = () => resolve('');
    input.click();
  });

  // Save: the browser saves the text as a file, so nothing is written on the server for another visitor.
  // No text, no file: the server has said why.
  const download = (type, name, extension) => (text) => {
    if (!text) return;
    const link = document.createElement('a');
    link.href = URL.createObjectURL(new Blob([text], {type}));
    link.download = `${name}-${new Date().toISOString().slice(0, 19).replaceAll(':', '')}.${extension}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  };

  // How to reach the page from code, with the address the browser is on.
  const apiSnippet = () => config.apiSnippet.replaceAll('PAGE_URL/', new URL('.', location.href).href);

  // An edit box left open would send its text into whatever conversation is shown when it is submitted:
  // whatever replaces the conversation closes it first.
  const closeEdit = () => $('#chatbot button[aria-label="Cancel"]')?.click();

  const raw = () => JSON.parse($('#raw-conversation textarea')?.value || '[]');
  const indexOf = (button) => {
    const buttons = button.closest('.message-buttons') || button.closest('.message-row');
    const rows = [...document.querySelectorAll('#chatbot .message-row')];
    return rows.filter((row) => row === buttons || row.compareDocumentPosition(buttons) & 4).length - 1;
  };

  // The fenced code blocks of a message's raw text, each as written (an unclosed one runs to the end).
  const fenced = (text) => {
    const blocks = [];
    let open = null, lines = [];
    for (const line of text.split('\n')) {
      const fence = line.match(/^ {0,3}(`{3,}|~{3,})(.*)$/);
      if (open === null) {
        if (fence && !(fence[1][0] === '`' && fence[2].includes('`'))) [open, lines] = [fence[1], []];
      } else if (fence && fence[1][0] === open[0] && fence[1].length >= open.length && !fence[2].trim()) {
        blocks.push(lines.join('\n'));
        open = null;
      } else {
        lines.push(line);
      }
    }
    if (open !== null) blocks.push(lines.join('\n'));
    return blocks;
  };
  const squeeze = (text) => text.replace(/[ \t]+/g, ' ').trim();

  // Gradio opens an edit box with the rendered text, possibly a few frames later: until then (or until
  // anything but this sets the box: typing, a paste, an extension), it is set back to the raw text.
  // Gradio may reuse the box of an earlier edit: each opening watches it anew.
  const fillEdit = (index) => {
    const text = raw()[index]?.content, opening = String(Math.random());
    let typed = false, ours = false;
    const fill = (tries) => {
      const box = document.querySelectorAll('#chatbot .message-row')[index]?.querySelector('textarea');
      if (box && box.dataset.opening !== opening) {
        box.dataset.opening = opening;
        box.addEventListener('input', () => { typed ||= !ours; });
      }
      if (box && text !== undefined && !typed && box.value !== text) {
        box.value = text;
        ours = true;
        box.dispatchEvent(new Event('input', {bubbles: true}));
        ours = false;
      }
      if (tries) requestAnimationFrame(() => fill(tries - 1));
    };
    fill(60);
  };

  // The chatbot's copy buttons and edit box would take the rendered text (HTML escaped as entities); they
  // get the raw text instead, from the hidden #raw-conversation box. Both clipboard paths that Gradio uses
  // are covered: navigator.clipboard.writeText, and execCommand('copy') off localhost.
  const exactCopies = () => {
    let next = null;
    document.addEventListener('click', (event) => {
      // A code block's copy button would take the rendered code, its tabs turned into spaces (a Makefile
      // would break): it gets the block as written, the one whose text it shows.
      const code = event.target.closest('#chatbot .copy_code_button');
      if (code) {
        const shown = squeeze(code.closest('.code_wrap')?.querySelector('pre')?.textContent ?? '');
        next = fenced(raw()[indexOf(code)]?.content ?? '').find((block) => squeeze(block) === shown) ?? null;
        return;
      }
      const button = event.target.closest('#chatbot button[aria-label]');
      const label = button?.getAttribute('aria-label');
      if (label === 'Copy conversation') next = raw().map((m) => `${m.role}: ${m.content}`).join('\n\n');
      else if (label === 'Copy message') next = raw()[indexOf(button)]?.content ?? null;
      else if (label === 'Edit') fillEdit(indexOf(button));
    }, true);
    document.addEventListener('copy', (event) => {
      if (next === null) return;
      event.clipboardData.setData('text/plain', next);
      event.preventDefault();
      next = null;
    }, true);
    if (navigator.clipboard) {
      const write = navigator.clipboard.writeText.bind(navigator.clipboard);
      navigator.clipboard.writeText = (text) => {
        const exact = next ?? text;
        next = null;
        return write(exact);
      };
    }
  };

  // Room for the chat. Up to 768 px Gradio draws a sidebar over the whole page, so both close; up to
  // 1,100 px two sidebars leave the chat a strip, so the settings close. At load, and as a window narrows.
  const fitSidebars = () => {
    const close = (selector) => document.querySelectorAll(selector).forEach((toggle) => toggle.click());
    const fit = () => {
      if (innerWidth <= 768) close('#history.open > .toggle-button, #settings.open > .toggle-button');
      else if (innerWidth <= 1100) close('#settings.open > .toggle-button');
    };
    fit();
    for (const width of [768, 1100]) {
      matchMedia(`(max-width: ${width}px)`).addEventListener('change', (event) => event.matches && fit());
    }
  };

  // Each code block of the conversation says its language (from its fence: ```python), above the code.
  // Gradio redraws a message as it streams: each redraw is labelled anew.
  const labelCode = () => {
    const label = () => {
      for (const code of document.querySelectorAll('#chatbot pre > code[class*="language-"]')) {
        const language = [...code.classList].find((name) => name.startsWith('language-')).slice(9);
        const wrap = code.closest('.code_wrap') ?? code.parentElement;
        if (wrap.dataset.language !== language) wrap.dataset.language = language;
      }
    };
    new MutationObserver(label).observe($('#chatbot'), {subtree: true, childList: true});
    label();
  };

  // "‹ 2/3 ›" under each message that Retry or Edit gave versions (#versions holds {index: [shown, of]}).
  // ‹ and › ask the server for the version before or after, through the hidden #flip button, whose event
  // takes what `flipTo` gives it with its other four inputs.
  let asked = '';
  const flipTo = (to, ...rest) => {
    const sent = asked;
    asked = '';
    return [sent, ...rest.slice(0, 4)];
  };
  const versions = () => {
    const button = (label, text, index, position, enabled) => {
      const flip = Object.assign(document.createElement('button'), {textContent: text, disabled: !enabled});
      flip.setAttribute('aria-label', label);
      flip.addEventListener('click', () => {
        if ($('#stop')?.checkVisibility()) return;  // not while a reply streams
        asked = JSON.stringify({at: index, position});
        $('#flip')?.click();
      });
      return flip;
    };
    const draw = () => {
      const marks = hiddenJson('#versions');
      document.querySelectorAll('#chatbot .message-row').forEach((row, index) => {
        const mark = marks[index], old = row.querySelector('.versions');
        const text = mark ? `${mark[0]}/${mark[1]}` : '';
        if (old?.dataset.text === text) return;
        old?.remove();
        if (!mark) return;
        const bar = Object.assign(document.createElement('div'), {className: 'versions'});
        bar.dataset.text = text;
        bar.append(
          button('Previous version', '‹', index, mark[0] - 2, mark[0] > 1),
          Object.assign(document.createElement('span'), {textContent: text}),
          button('Next version', '›', index, mark[0], mark[0] < mark[1]),
        );
        (row.querySelector('.message-buttons') ?? row).append(bar);
      });
    };
    watch('#chatbot', draw);
  };

  // The demo notice closes for good in this browser.
  const dismissible = (notice) => {
    const key = `${config.storagePrefix}closed-${notice.id}`;
    notice.title = notice.innerText;  // one line, cut to the window: the whole of it on hover
    if (localStorage.getItem(key)) notice.classList.add('closed');
    const close = Object.assign(document.createElement('button'), {className: 'close', textContent: '×'});
    close.setAttribute('aria-label', 'Close this notice');
    close.addEventListener('click', () => {
      notice.classList.add('closed');
      localStorage.setItem(key, '1');
    });
    notice.prepend(close);
  };

  // An edit box as a message box: Enter saves, Shift+Enter adds a line, Escape cancels.
  const editKeys = () => document.addEventListener('keydown', (event) => {
    if (event.isComposing || !event.target.closest?.('#chatbot .edit-textarea')) return;
    const save = event.key === 'Enter' && !event.shiftKey, cancel = event.key === 'Escape';
    if (!save && !cancel) return;
    event.preventDefault();
    $(`#chatbot button[aria-label="${save ? 'Submit' : 'Cancel'}"]`)?.click();
  }, true);

  const start = () => {
    fitSidebars();
    editKeys();
    const notice = $('#demo-notice');
    if (notice) dismissible(notice);
    labelCode();
    versions();
    conversationList();
    // Clear empties the open conversation for good (the list keeps no copy): it asks first, as Delete does.
    document.addEventListener('click', (event) => {
      if (!event.target.closest('#chatbot button[aria-label="Clear"]') || !raw().length) return;
      if (window.confirm(config.clearQuestion)) return;
      event.stopImmediatePropagation();
      event.preventDefault();
    }, true);
    exactCopies();
    // No like or dislike is taken while a reply streams: the reply's end would draw over it.
    const marks = ['Like', 'Liked', 'Dislike', 'Disliked'].map((label) => `#chatbot button[aria-label="${label}"]`);
    document.addEventListener('click', (event) => {
      if (!event.target.closest?.(marks.join(', ')) || !$('#stop')?.checkVisibility()) return;
      event.stopImmediatePropagation();
      event.preventDefault();
    }, true);
    const replacing = '#new-conversation, #conversations label, #chatbot button[aria-label="Clear"]';
    document.addEventListener('click', (event) => event.target.closest(replacing) && closeEdit(), true);
  };

  return {
    start, take, sendStored, switchStored, readStored, listAction, takeIn, inTurn, openFile, apiSnippet, flipTo,
    saveJson: download('application/json', 'conversation', 'json'),
    saveMarkdown: download('text/markdown', 'conversation', 'md'),
    savePreferences: download('application/jsonl', 'preferences', 'jsonl'),
  };
})();

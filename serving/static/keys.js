// The key panel in both pages' headers: paste a key, use it, forget it. The key stays in this tab's
// sessionStorage only, and the page sends it as a Bearer token. The page's <details id="key-panel">
// names the key in its <summary>; the form inside is drawn here, every word set as text.

function element(tag, properties, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

export class KeyPanel {
  // `storageKey`: the sessionStorage entry that holds the key. `describe(key)`: the line under the
  // form for the key now set ("" when there is none), shown on each change and by `showState()`.
  constructor(storageKey, describe) {
    this.storageKey = storageKey;
    this.describe = describe;
    this.panel = document.getElementById("key-panel");
    const name = this.panel.querySelector("summary").textContent;
    const input = element("input", { id: "key-input", type: "password", autocomplete: "off", spellcheck: false });
    const forget = element("button", { type: "button", className: "quiet" }, "Forget");
    this.state = element("p", { id: "key-state", className: "hint" });
    this.state.setAttribute("role", "status");
    const form = element(
      "form",
      {},
      element("label", { htmlFor: input.id }, `${name}, kept in this tab only`),
      input,
      element("div", { className: "row" }, element("button", { type: "submit" }, "Use key"), forget),
      this.state,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (key) sessionStorage.setItem(this.storageKey, key);
      input.value = "";
      this.showState();
    });
    forget.addEventListener("click", () => this.forget());
    this.panel.append(form);
  }

  get value() {
    return sessionStorage.getItem(this.storageKey) || "";
  }

  forget() {
    sessionStorage.removeItem(this.storageKey);
    this.showState();
  }

  showState() {
    this.state.textContent = this.describe(this.value);
  }

  open() {
    this.panel.open = true;
  }
}

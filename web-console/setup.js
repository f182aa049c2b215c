// First-time setup: while the box has no administrator, the login page becomes a form that
// creates the first one with the one-time setup code shown on the box's own screen (or in
// <data dir>/console/setup-code; never in the journal). Uses h(), api(), signedIn() and home() of
// console.js, which calls duliSetup() from its login page.
"use strict";

window.duliSetup = async function duliSetup() {
  let st;
  try {
    st = await api("GET", "/api/v1/setup");
  } catch (e) {
    return;
  }
  if (!st.required || location.hash !== "#/login") return;
  if (st.accounts) {
    // Accounts exist, none of them an administrator: keep the login form, offer setup.
    const login = document.getElementById("login-form");
    if (login) {
      login.appendChild(h("p", {}, "This box has no administrator yet. ",
        h("button", { type: "button", id: "show-setup", onclick: () => setupForm(st) }, "First-time setup")));
    }
    return;
  }
  setupForm(st);
};

function setupForm(st) {
  const code = h("input", { id: "setup-code", name: "code", autocomplete: "off", required: true, spellcheck: "false" });
  const user = h("input", { id: "setup-user", name: "username", autocomplete: "username", required: true });
  if (st.username) { user.value = st.username; user.readOnly = true; }
  const pass = h("input", { id: "setup-password", name: "password", type: "password", autocomplete: "new-password", minlength: "12", required: true });
  const again = h("input", { id: "setup-again", name: "again", type: "password", autocomplete: "new-password", minlength: "12", required: true });
  const msg = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card login", id: "setup-form" },
    h("h2", {}, "First-time setup"),
    h("p", {}, "This box has no administrator yet. Enter the setup code shown on the box's own screen (also in the file console/setup-code of its data folder, readable by root and the service only), and choose the administrator's password."),
    h("label", { for: "setup-code" }, "Setup code"), code,
    h("label", { for: "setup-user" }, "Administrator user name"), user,
    h("label", { for: "setup-password" }, "Password (at least 12 characters)"), pass,
    h("label", { for: "setup-again" }, "Password again"), again,
    h("button", { type: "submit", class: "primary" }, "Create administrator"),
    msg);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    if (pass.value !== again.value) { msg.textContent = "The passwords differ."; return; }
    try {
      await api("POST", "/api/v1/setup", { code: code.value, username: user.value, password: pass.value });
      const me = await api("POST", "/api/v1/login", { username: user.value, password: pass.value });
      signedIn(me);
      location.hash = home();
    } catch (err) {
      msg.textContent = err.status === 403 ? "Wrong setup code." : err.message;
    }
  });
  app.replaceChildren(form);
  code.focus();
}

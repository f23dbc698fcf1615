/**
 * A URL or endpoint as it may be shown in a message or log: the password of any userinfo and the
 * value of every query parameter replaced by `***` (`etcd://alice:***@host:2379?password=***`).
 */
export function redactUrl(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*:(?:\/\/)?)([\s\S]*)$/i.exec(url);
  const head = m ? m[1]! : '';
  let rest = m ? m[2]! : url;
  // Userinfo ends at the last '@' (a password may hold '/', '?', '#' or '@'); over-redacting a
  // query value that holds an '@' is the safe mistake.
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const colon = rest.indexOf(':');
    const user = colon >= 0 && colon < at ? rest.slice(0, colon) : '';
    rest = `${user === '' || /[/?#]/.test(user) ? '' : `${user}:`}***${rest.slice(at)}`;
  }
  return head + rest.replace(/([?&;][^=&;#]*)=[^&;#]*/g, '$1=***');
}

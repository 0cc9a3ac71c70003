# help_for_man.awk: rewrites the settings table of a berth program's --help
# (option, environment, default and meaning columns, placed by the header
# line) into one "  --option  meaning (environment, default)" line each, the
# shape help2man turns into an option list. Other lines pass unchanged.
function trim(s) { sub(/^ +/, "", s); sub(/ +$/, "", s); return s }
/^ +option +environment +default +meaning *$/ {
    env = index($0, "environment"); def = index($0, "default"); mean = index($0, "meaning")
    next
}
env && /^ +-/ {
    opt = trim(substr($0, 1, env - 1)); e = trim(substr($0, env, def - env))
    d = trim(substr($0, def, mean - def)); m = trim(substr($0, mean))
    extra = ""
    if (e != "") extra = "environment " e
    if (d != "" && d != "-") extra = extra (extra != "" ? ", " : "") "default " d
    print "  " opt "  " m (extra != "" ? " (" extra ")" : "")
    next
}
{ print }

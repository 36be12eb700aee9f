# Provisioning settings read as data, never as shell: sourced by rc.boot (and the
# image's unit tests). A setting is KEY=VALUE with KEY from a fixed set and VALUE
# checked against that key's pattern; nothing is evaluated, and a rejected or
# unknown entry is logged as an event naming the source and key, never the value
# (values may be secrets, or hostile text). Events go to stderr (the console).

settings_event() { echo "sennet-init: $*" >&2; }

# only VALUE CHARS: VALUE is 1..256 characters, each one of the bracket-expression CHARS.
settings_only() {
    [ -n "$1" ] && [ "${#1}" -le 256 ] || return 1
    case "$1" in *[!$2]*) return 1;; esac
    return 0
}

# settings_check KEY VALUE: 0 valid, 1 invalid value, 2 unknown key.
settings_check() {
    case "$1" in
        mgmt_if) [ "${#2}" -le 15 ] && settings_only "$2" 'A-Za-z0-9_.-' ;;
        ip) [ "$2" = dhcp ] || { settings_only "$2" '0-9./' &&
            case "$2" in [0-9]*.[0-9]*.[0-9]*.[0-9]*/[0-9]*) true;; *) false;; esac; } ;;
        gw | dns) settings_only "$2" '0-9a-fA-F.:' ;;
        control_plane) settings_only "$2" 'A-Za-z0-9.:_,-' ;;  # "host:port,host:port" replicas
        metrics_listen) settings_only "$2" 'A-Za-z0-9.:_-' ;;
        bootstrap_token) settings_only "$2" 'A-Za-z0-9._~+/=-' ;;
        interfaces) settings_only "$2" 'A-Za-z0-9_.,-' ;;
        tls_server_name) settings_only "$2" 'A-Za-z0-9.-' ;;
        otlp_endpoints) settings_only "$2" 'A-Za-z0-9.:/,_-' &&
            case "$2" in grpc://* | grpcs://* | http://* | https://*) true;; *) false;; esac ;;
        log_level) case "$2" in debug | info | warning | error | critical) true;; *) false;; esac ;;
        interval_s) settings_only "$2" '0-9.' ;;
        ssh_key) settings_only "$2" 'A-Za-z0-9+/=:@._-' ;;  # test variant's rc.test
        early_attach) case "$2" in on | off) true;; *) false;; esac ;;  # rc.boot's loader
        # The image's identity, set by each slot's UKI (rc.boot writes /run/sennet/image.env).
        slot) case "$2" in a | b) true;; *) false;; esac ;;
        version) [ "${#2}" -le 64 ] && settings_only "$2" 'A-Za-z0-9.~-' ;;
        image_digest) [ "${#2}" -eq 64 ] && settings_only "$2" '0-9a-f' ;;
        *) return 2 ;;
    esac || return 1
}

# settings_accept SOURCE WHERE KEY VALUE: print "key=value" if valid, else log why.
settings_accept() {
    settings_check "$3" "$4"
    case $? in
        0) printf '%s=%s\n' "$3" "$4" ;;
        1) settings_event "event=provisioning_rejected source=$1$2 key=$3 why=invalid_value" ;;
        *) settings_event "event=provisioning_unknown_key source=$1$2 key=$3" ;;
    esac
}

# settings_from_cmdline < /proc/cmdline: the sennet.KEY=VALUE words, checked.
settings_from_cmdline() {
    tr ' \t' '\n\n' | while IFS= read -r w; do
        # sennet.verity.*: the layers' root hashes, the initramfs's (not settings)
        case "$w" in sennet.verity.*) continue;; sennet.*) ;; *) continue;; esac
        key=${w#sennet.}
        key=${key%%=*}
        case "$w" in *=*) ;; *) key="";; esac
        case "$key" in
            "" | *[!a-z0-9_]*) settings_event "event=provisioning_rejected source=cmdline key=(invalid) why=not_key_value" ;;
            *) settings_accept cmdline "" "$key" "${w#*=}" ;;
        esac
    done
}

# settings_from_env_file SOURCE < FILE: SENNET_KEY=VALUE lines (VALUE optionally in one
# pair of double or single quotes); blank lines and # comments skipped.
settings_from_env_file() {
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=${line%"$(printf '\r')"}
        case "$line" in "" | "#"*) continue;; esac
        name=${line%%=*}
        case "$line" in *=*) ;; *) name="";; esac
        case "$name" in
            SENNET_*) ;;
            *)
                settings_event "event=provisioning_rejected source=$1 line=$n key=(invalid) why=not_key_value"
                continue
                ;;
        esac
        case "$name" in
            *[!A-Z0-9_]*)
                settings_event "event=provisioning_rejected source=$1 line=$n key=(invalid) why=not_key_value"
                continue
                ;;
        esac
        v=${line#*=}
        case "$v" in
            \"*\") v=${v#\"}; v=${v%\"} ;;
            \'*\') v=${v#\'}; v=${v%\'} ;;
        esac
        key=$(echo "${name#SENNET_}" | tr A-Z a-z)
        case "$key" in
            mgmt_if | ip | gw | dns | early_attach) settings_accept "$1" " line=$n" "$key" "$v" ;;
            *) settings_event "event=provisioning_unknown_key source=$1 line=$n key=$name" ;;
        esac
    done
}

# setting KEY FILE: the last accepted value of KEY in FILE (settings_* output), or nothing.
# Shell builtins only: rc.boot asks for about 15 values, and each sed | tail pair cost tens
# of milliseconds under TCG.
setting() {
    _setting=""
    while IFS= read -r _line || [ -n "$_line" ]; do
        case "$_line" in "$1="*) _setting=${_line#*=} ;; esac
    done < "$2"
    [ -z "$_setting" ] || printf '%s\n' "$_setting"
}

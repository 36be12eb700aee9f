{
  description = "Sennet appliance: pinned toolchain, the image from nixpkgs parts, checks";

  # Pinned by flake.lock (nixos-24.05). This machine cannot fetch it: see images/README notes.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; };
      lib = pkgs.lib;

      # Only what the build reads: no build outputs, caches or the venv in the source.
      src = lib.cleanSourceWith {
        src = ./.;
        filter = path: type:
          let rel = lib.removePrefix (toString ./. + "/") (toString path);
          in !(lib.hasPrefix "build" rel || lib.hasPrefix ".venv" rel
               || lib.hasPrefix "bazel-" rel || lib.hasSuffix ".pyc" rel);
      };

      # The agent's runtime: the same packages as python/pyproject.toml, from nixpkgs.
      python = pkgs.python311.withPackages (ps: with ps; [
        prometheus-client grpcio grpcio-health-checking protobuf
      ]);
      busybox = pkgs.pkgsStatic.busybox;
      kernel = pkgs.linuxPackages_6_1.kernel;
      efiStub = "${pkgs.systemd}/lib/systemd/boot/efi/linuxx64.efi.stub";

      # Everything the build and the tests run (Bazel 4.2.3 is Debian's; nixpkgs has newer).
      devPython = pkgs.python311.withPackages (ps: with ps; [
        pyroute2 numpy prometheus-client grpcio grpcio-health-checking protobuf pytest mypy
      ]);
      toolchain = with pkgs; [
        devPython ruff
        clang_14 llvm_14 libbpf bpftools
        squashfsTools erofs-utils mtools dosfstools util-linux gptfdisk e2fsprogs
        binutils dpkg cpio xz zstd qemu_kvm OVMF diffoscopeMinimal dropbear
        bazel_6
      ];

      bpfObjects = pkgs.runCommand "sennet-bpf" { nativeBuildInputs = [ pkgs.clang_14 ]; } ''
        mkdir -p $out
        for s in sennet_tc bench_empty; do
          # flags shared with bpf/build.sh and bpf/BUILD.bazel
          clang $(sed -e '/^#/d' ${src}/bpf/cflags) -I${pkgs.linuxHeaders}/include -I${src}/bpf \
            -fdebug-prefix-map=${src}=. \
            -c ${src}/bpf/$s.bpf.c -o $out/$s.bpf.o
        done
      '';

      # The boot-time loader rc.boot runs (user space, against nixpkgs' libbpf).
      earlyAttach = pkgs.runCommandCC "sennet-early-attach" { buildInputs = [ pkgs.libbpf ]; } ''
        mkdir -p $out
        $CC $(sed -e '/^#/d' ${src}/bpf/loader/cflags) -o $out/sennet-early-attach \
          ${src}/bpf/loader/early_attach.c -lbpf
      '';

      rootClosure = pkgs.closureInfo { rootPaths = [ python busybox pkgs.libbpf earlyAttach ]; };

      appliance = pkgs.runCommand "sennet-appliance" {
        nativeBuildInputs = with pkgs; [ python311 squashfsTools mtools dosfstools util-linux
                                         binutils qemu-utils xz ];
        SOURCE_DATE_EPOCH = "1700000000";
        SENNET_EFI_STUB = efiStub;
      } ''
        cd ${src}
        PYTHONPATH=${src}/images:${src}/python python3 -m sennet_image step nix-image \
          --closure ${rootClosure}/store-paths --python-env ${python} --busybox ${busybox} \
          --libbpf ${pkgs.libbpf} --kernel ${kernel} --python-src ${src}/python \
          --bpf ${bpfObjects}/sennet_tc.bpf.o ${bpfObjects}/bench_empty.bpf.o \
          ${earlyAttach}/sennet-early-attach --out $out
      '';
    in {
      devShells.${system}.default = pkgs.mkShell {
        packages = toolchain;
        SENNET_EFI_STUB = efiStub;
        shellHook = ''echo "sennet dev shell: bazel build //images:appliance, images/build, images/boot"'';
      };

      packages.${system} = {
        inherit appliance;
        default = appliance;
      };

      checks.${system} = {
        # Unit tests of the image tooling (no VM).
        image-tooling = pkgs.runCommand "sennet-image-tooling-tests" {
          nativeBuildInputs = toolchain;
        } ''
          cd ${src}/images && HOME=$TMPDIR python3 -m pytest -q -p no:cacheprovider \
            -m "not integration" tests && touch $out
        '';
        # The VM tests: boot the image built above, agent attached (TCG unless KVM works).
        vm-boot = pkgs.runCommand "sennet-vm-boot" {
          nativeBuildInputs = toolchain;
          requiredSystemFeatures = [ "kvm" ];
        } ''
          cd ${src}/images && HOME=$TMPDIR SENNET_IMAGE_DIR=${appliance} \
            python3 -m pytest -q -p no:cacheprovider -m integration tests/test_boot.py -k direct \
            && touch $out
        '';
      };
    };
}

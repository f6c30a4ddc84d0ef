# cdrom-worker for hosts that run it under Docker (compose.yaml). The container talks to
# the host's libvirtd through its socket and activates volumes on the host's devices, so
# it runs privileged with /dev, /var/run/libvirt and the storage root mounted.

# --- build: the native libvirt addon (node-gyp) and the TypeScript (tsc) -----------------
FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# node-gyp builds against the image's own headers instead of downloading them.
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json binding.gyp tsconfig.json tsconfig.build.json ./
COPY native ./native
COPY src ./src
COPY bin ./bin
# `npm ci` runs node-gyp rebuild (install) and tsc -p tsconfig.build.json (prepare).
RUN npm ci --no-audit --no-fund \
 && npm run build \
 && npm prune --omit=dev --no-audit --no-fund

# --- runtime ----------------------------------------------------------------------------
FROM node:20-bookworm-slim
# libvirt0: the client library the addon links; lvm2: LV lookups and dm activation (loop
# activation and the opener scan are the addon's own ioctls and /proc reads); util-linux
# and procps: losetup, ps and the like for an operator inside the container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt0 lvm2 util-linux procps \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production LVM_SUPPRESS_FD_WARNINGS=1
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY --from=build /app/build/Release/virt.node ./build/Release/virt.node
ENTRYPOINT ["node", "bin/cdrom-worker.js"]
CMD ["run"]

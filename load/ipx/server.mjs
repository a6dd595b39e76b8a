// ipx over a folder, on 127.0.0.1: `node server.mjs DIR PORT`. ipx keeps no result cache (each
// request reads the source, runs sharp and encodes), so distinct URLs are misses.
import { createServer } from "node:http";
import { createIPX, createIPXNodeServer, ipxFSStorage } from "ipx";

const [dir, port] = process.argv.slice(2);
const ipx = createIPX({ storage: ipxFSStorage({ dir }) });
createServer(createIPXNodeServer(ipx)).listen(Number(port), "127.0.0.1", () => console.log(`ipx on ${port}`));

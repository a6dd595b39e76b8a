// Writes a 2048x1536 JPEG (quality 90) from a sample photo: `node make-photo.mjs IN OUT`.
import sharp from "sharp";

const [input, output] = process.argv.slice(2);
await sharp(input).resize(2048, 1536, { fit: "cover" }).jpeg({ quality: 90 }).toFile(output);

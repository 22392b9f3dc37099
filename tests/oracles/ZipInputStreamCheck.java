// The reader XNAT's DICOM-zip import handler uses (DicomZipImporter: new ZipInputStream(...)), run on a file.
//
// Usage: java ZipInputStreamCheck.java FILE.zip
// Prints one line per entry, in stream order: name, TAB, bytes read, TAB, CRC-32 (lower-case hex) of the
// bytes read. On any exception (what XNAT turns into 400 "unable to read data from file") prints the exception
// class and message to stderr and exits 3. The entries listed before the failure stay on stdout.

import java.io.BufferedInputStream;
import java.io.FileInputStream;
import java.io.InputStream;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipInputStream;

public class ZipInputStreamCheck {
    public static void main(String[] args) {
        if (args.length != 1) {
            System.err.println("usage: java ZipInputStreamCheck.java FILE.zip");
            System.exit(2);
        }
        byte[] buf = new byte[1 << 16];
        try (InputStream raw = new BufferedInputStream(new FileInputStream(args[0]));
             ZipInputStream zin = new ZipInputStream(raw)) {
            ZipEntry entry;
            while ((entry = zin.getNextEntry()) != null) {
                CRC32 crc = new CRC32();
                long size = 0;
                int n;
                while ((n = zin.read(buf, 0, buf.length)) != -1) {
                    crc.update(buf, 0, n);
                    size += n;
                }
                System.out.println(entry.getName() + "\t" + size + "\t" + Long.toHexString(crc.getValue()));
            }
        } catch (Exception e) {
            System.out.flush();
            System.err.println(e.getClass().getName() + ": " + e.getMessage());
            System.exit(3);
        }
    }
}

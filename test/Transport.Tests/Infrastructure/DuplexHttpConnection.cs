using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Transport.Tests.Infrastructure;

/// <summary>
/// A raw HTTP/1.1 client that sends a request body and reads the response at the same time. HttpClient
/// reads a response body only after it has sent the whole request body, so a large echo deadlocks once
/// the bytes in flight exceed every buffer in between, on any server; this client never does.
/// </summary>
public sealed class DuplexHttpConnection : IDisposable
{
    private static readonly int[] PieceSizes = [1, 7, 1000, 4096, 65_537, 300_000];

    private readonly Socket _socket;
    private readonly byte[] _buffer = new byte[64 * 1024];
    private int _start;
    private int _end;

    private DuplexHttpConnection(Socket socket) => _socket = socket;

    public static async Task<DuplexHttpConnection> ConnectAsync(int port)
        => new(await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)));

    /// <summary>POST /echo with <paramref name="body"/>, sent with a Content-Length or chunked in uneven pieces.</summary>
    public async Task<EchoResponse> EchoAsync(byte[] body, bool chunked, bool close = false)
    {
        var ct = TestContext.Current.CancellationToken;
        var sending = Task.Run(() => SendEchoRequestAsync(body, chunked, close, ct), ct);
        var response = await ReadResponseAsync(ct);
        await sending;
        return response;
    }

    private async Task SendEchoRequestAsync(byte[] body, bool chunked, bool close, CancellationToken ct)
    {
        var head = new StringBuilder("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n");
        head.Append(chunked ? "Transfer-Encoding: chunked\r\n" : $"Content-Length: {body.Length}\r\n");
        head.Append(close ? "Connection: close\r\n\r\n" : "\r\n");
        await _socket.SendAsync(Encoding.ASCII.GetBytes(head.ToString()), SocketFlags.None, ct);
        if (!chunked)
        {
            await _socket.SendAsync(body, SocketFlags.None, ct);
            return;
        }

        for (int offset = 0, i = 0; offset < body.Length; i++)
        {
            var size = Math.Min(PieceSizes[i % PieceSizes.Length], body.Length - offset);
            await _socket.SendAsync(Encoding.ASCII.GetBytes($"{size:x}\r\n"), SocketFlags.None, ct);
            await _socket.SendAsync(body.AsMemory(offset, size), SocketFlags.None, ct);
            await _socket.SendAsync("\r\n"u8.ToArray(), SocketFlags.None, ct);
            offset += size;
        }

        await _socket.SendAsync("0\r\n\r\n"u8.ToArray(), SocketFlags.None, ct);
    }

    private async Task<EchoResponse> ReadResponseAsync(CancellationToken ct)
    {
        var statusLine = await ReadLineAsync(ct);
        var status = int.Parse(statusLine.Split(' ')[1], CultureInfo.InvariantCulture);
        long? contentLength = null;
        var chunked = false;
        string line;
        while ((line = await ReadLineAsync(ct)).Length > 0)
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            var name = line[..colon].Trim();
            var value = line[(colon + 1)..].Trim();
            if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
            {
                contentLength = long.Parse(value, CultureInfo.InvariantCulture);
            }
            else if (name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase))
            {
                chunked = value.Contains("chunked", StringComparison.OrdinalIgnoreCase);
            }
        }

        var body = new MemoryStream();
        if (chunked)
        {
            int size;
            while ((size = int.Parse((await ReadLineAsync(ct)).Split(';')[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture)) > 0)
            {
                await ReadExactlyAsync(body, size, ct);
                await ReadLineAsync(ct);
            }

            while ((await ReadLineAsync(ct)).Length > 0)
            {
                // Trailers: none expected, skipped.
            }
        }
        else
        {
            await ReadExactlyAsync(body, contentLength ?? 0, ct);
        }

        return new EchoResponse(status, chunked, contentLength, body.ToArray());
    }

    private async Task<string> ReadLineAsync(CancellationToken ct)
    {
        var line = new StringBuilder();
        while (true)
        {
            if (_start == _end)
            {
                await FillAsync(ct);
            }

            var b = (char)_buffer[_start++];
            if (b == '\n')
            {
                return line.ToString().TrimEnd('\r');
            }

            line.Append(b);
        }
    }

    private async Task ReadExactlyAsync(Stream destination, long count, CancellationToken ct)
    {
        while (count > 0)
        {
            if (_start == _end)
            {
                await FillAsync(ct);
            }

            var take = (int)Math.Min(count, _end - _start);
            destination.Write(_buffer, _start, take);
            _start += take;
            count -= take;
        }
    }

    private async Task FillAsync(CancellationToken ct)
    {
        _start = 0;
        _end = await _socket.ReceiveAsync(_buffer, SocketFlags.None, ct);
        if (_end == 0)
        {
            throw new IOException("The server closed the connection in the middle of a response.");
        }
    }

    public void Dispose() => _socket.Dispose();
}

/// <summary>What came back: status, framing, and the body.</summary>
public sealed record EchoResponse(int Status, bool Chunked, long? ContentLength, byte[] Body);

using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelApp;

namespace Transport.Tests.Soak;

/// <summary>
/// One raw keep-alive HTTP/1.1 connection that asks for /plaintext and checks the whole response: a 200,
/// Content-Length 13, no Connection: close, the exact body, and not one byte more.
/// </summary>
public sealed class KeepAliveConnection : IDisposable
{
    private static readonly byte[] Request = "GET /plaintext HTTP/1.1\r\nHost: soak\r\n\r\n"u8.ToArray();

    private readonly Socket _socket;
    private readonly byte[] _buffer = new byte[512];

    private KeepAliveConnection(Socket socket) => _socket = socket;

    public static async Task<KeepAliveConnection> OpenAsync(IPEndPoint endPoint, CancellationToken ct)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(endPoint, ct);
            return new KeepAliveConnection(socket);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>One request and its response; throws <see cref="InvalidDataException"/> on anything unexpected.</summary>
    public async Task RequestAsync(CancellationToken ct)
    {
        await _socket.SendAsync(Request, SocketFlags.None, ct);

        int received = 0, headEnd;
        while ((headEnd = _buffer.AsSpan(0, received).IndexOf("\r\n\r\n"u8)) < 0)
        {
            received += await ReceiveSomeAsync(received, ct);
        }

        var head = Encoding.ASCII.GetString(_buffer, 0, headEnd);
        var lines = head.Split("\r\n");
        if (!lines[0].StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"status line '{lines[0]}'");
        }

        long? contentLength = null;
        foreach (var line in lines.AsSpan(1))
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            var name = line[..colon].Trim();
            var value = line[(colon + 1)..].Trim();
            if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
            {
                contentLength = long.Parse(value, CultureInfo.InvariantCulture);
            }
            else if (name.Equals("Connection", StringComparison.OrdinalIgnoreCase) && value.Contains("close", StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidDataException("the server ended a keep-alive connection (Connection: close)");
            }
        }

        var body = SampleHost.PlaintextBody;
        if (contentLength != body.Length)
        {
            throw new InvalidDataException($"Content-Length {contentLength?.ToString(CultureInfo.InvariantCulture) ?? "missing"}, expected {body.Length}");
        }

        var total = headEnd + 4 + body.Length;
        while (received < total)
        {
            received += await ReceiveSomeAsync(received, ct);
        }

        if (received != total)
        {
            throw new InvalidDataException($"{received - total} bytes after the response");
        }

        if (!_buffer.AsSpan(headEnd + 4, body.Length).SequenceEqual(body))
        {
            throw new InvalidDataException($"body '{Encoding.ASCII.GetString(_buffer, headEnd + 4, body.Length)}'");
        }
    }

    private async Task<int> ReceiveSomeAsync(int offset, CancellationToken ct)
    {
        if (offset == _buffer.Length)
        {
            throw new InvalidDataException($"a response longer than {_buffer.Length} bytes");
        }

        var read = await _socket.ReceiveAsync(_buffer.AsMemory(offset), SocketFlags.None, ct);
        return read > 0 ? read : throw new InvalidDataException($"the server closed the connection after {offset} bytes of the response");
    }

    /// <summary>Drops the connection: a FIN, or with <paramref name="reset"/> an RST (zero linger).</summary>
    public void Drop(bool reset)
    {
        if (reset)
        {
            _socket.LingerState = new LingerOption(true, 0);
        }

        _socket.Dispose();
    }

    public void Dispose() => _socket.Dispose();
}
